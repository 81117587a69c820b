"""Signed and encrypted artifacts through the real fetch step and the real server model:
model-signing signatures made with one key pass and every other case (another key, a file
changed and re-listed under a new digest, no signature) is refused with its reason before
anything is installed; an encrypted artifact lands as ciphertext only, opens in memory with
its key (external data too) and answers as the plaintext model does, and a wrong or missing
key is a reason, not a crash."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fogline.workloads import encryption, signatures
from fogline.workloads.manifest import ArtifactError, manifest_digest
from fogline.workloads.server.model import OnnxModel, RuntimeOptions
from tests.workloads.conftest import TrainerRunner
from tests.workloads.served_artifacts import (
    write_artifact,
    write_key_pair,
    write_sealed_artifact,
)
from tests.workloads.test_fetch import FileServer, cache_contents, fetch

pytestmark = pytest.mark.workloads

KEY = bytes(range(32))


def termination(tmp_path: Path) -> dict[str, str]:
    loaded: dict[str, str] = json.loads((tmp_path / "termination.json").read_text())
    return loaded


@pytest.fixture
def env_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination.json"
    monkeypatch.setenv("FOGLINE_TERMINATION_LOG", str(path))
    return path


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    return {name: write_key_pair(tmp_path / "keys", name) for name in ("trainer", "other")}


def signed_artifact(folder: Path, private_key: Path, seed: int = 0) -> str:
    digest = write_artifact(folder, seed=seed)
    signatures.sign_artifact(folder, private_key)
    return digest


def test_signed_artifact_installs_and_the_cache_keeps_its_signature(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]], env_log: Path
) -> None:
    folder = tmp_path / "src"
    digest = signed_artifact(folder, keys["trainer"][0])
    (folder / "checkpoints").mkdir()  # trainer scratch beside the artifact is never signed
    public = str(keys["trainer"][1])
    code = fetch(
        str(folder), digest, tmp_path / "cache", tmp_path / "dest", "--signature-public-key", public
    )
    assert code == 0
    entry = tmp_path / "cache" / f"sha256-{digest.removeprefix('sha256:')}"
    assert (entry / signatures.SIGNATURE_FILE).is_file()
    shutil.rmtree(folder)  # offline: the cached signature is enough
    code = fetch(
        str(folder),
        digest,
        tmp_path / "cache",
        tmp_path / "dest2",
        "--signature-public-key",
        public,
    )
    assert code == 0 and (tmp_path / "dest2" / "model.onnx").is_file()


def test_artifact_signed_by_another_key_is_refused_and_nothing_installed(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]], env_log: Path
) -> None:
    folder = tmp_path / "src"
    digest = signed_artifact(folder, keys["other"][0])
    code = fetch(
        str(folder),
        digest,
        tmp_path / "cache",
        tmp_path / "dest",
        "--signature-public-key",
        str(keys["trainer"][1]),
    )
    assert code == 1
    assert termination(tmp_path)["reason"] == "SignatureInvalid"
    assert "does not verify with the public key" in termination(tmp_path)["message"]
    assert not (tmp_path / "dest" / "manifest.json").exists()


def test_file_changed_and_relisted_under_a_new_digest_fails_the_old_signature(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]], env_log: Path
) -> None:
    """Who may edit the bucket may also write a new manifest and pin its digest; only the
    signature, over the old manifest, still tells that the trainer did not make it."""
    folder = tmp_path / "src"
    signed_artifact(folder, keys["trainer"][0])
    model = folder / "model.onnx"
    model.write_bytes(model.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    manifest = json.loads((folder / "manifest.json").read_text())
    data = model.read_bytes()
    manifest["files"]["model.onnx"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "sizeBytes": len(data),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code = fetch(
        str(folder),
        manifest_digest(manifest),
        tmp_path / "cache",
        tmp_path / "dest",
        "--signature-public-key",
        str(keys["trainer"][1]),
    )
    assert code == 1
    message = termination(tmp_path)
    assert message["reason"] == "SignatureInvalid"
    assert "differ from what it signs: manifest.json, model.onnx" in message["message"]
    assert not (tmp_path / "dest" / "model.onnx").exists()


def test_unsigned_artifact_where_a_signature_is_required_is_refused(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]], env_log: Path
) -> None:
    folder = tmp_path / "src"
    digest = write_artifact(folder)
    code = fetch(
        str(folder),
        digest,
        tmp_path / "cache",
        tmp_path / "dest",
        "--signature-public-key",
        str(keys["trainer"][1]),
    )
    assert code == 1
    assert termination(tmp_path)["reason"] == "SignatureMissing"
    # Without the requirement, the same cache entry installs: the digest is unchanged.
    assert fetch(str(folder), digest, tmp_path / "cache", tmp_path / "dest") == 0


def test_signature_over_http_is_read_beside_the_manifest_and_a_404_is_missing(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]], env_log: Path
) -> None:
    signed = signed_artifact(tmp_path / "site" / "signed", keys["trainer"][0], seed=1)
    unsigned = write_artifact(tmp_path / "site" / "unsigned", seed=2)
    server = FileServer(tmp_path / "site")
    try:
        public = ["--signature-public-key", str(keys["trainer"][1])]
        assert fetch(f"{server.url}/signed", signed, tmp_path / "c", tmp_path / "d1", *public) == 0
        code = fetch(f"{server.url}/unsigned", unsigned, tmp_path / "c", tmp_path / "d2", *public)
        assert code == 1 and termination(tmp_path)["reason"] == "SignatureMissing"
    finally:
        server.stop()


def loads_as_onnx(path: Path) -> bool:
    """Whether onnxruntime builds a session from the file's bytes (protobuf alone parses
    almost anything, an empty file included, as some message)."""
    try:
        ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime's errors share no base class worth naming
        return False
    return True


def test_encrypted_artifact_lands_as_ciphertext_and_serves_like_the_plaintext(
    tmp_path: Path, env_log: Path
) -> None:
    plain_digest = write_artifact(tmp_path / "plain", seed=4)
    digest = write_sealed_artifact(tmp_path / "sealed", KEY, seed=4)
    assert digest != plain_digest  # the digest covers the ciphertext
    (tmp_path / "key").write_bytes(KEY)
    code = fetch(
        str(tmp_path / "sealed"),
        digest,
        tmp_path / "cache",
        tmp_path / "dest",
        "--model-key-file",
        str(tmp_path / "key"),
    )
    assert code == 0
    landed = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    landed += [p for p in (tmp_path / "dest").rglob("*") if p.is_file()]
    assert any(p.name == "model.onnx.enc" for p in landed)
    assert loads_as_onnx(tmp_path / "plain" / "model.onnx")  # the check can tell
    assert not any(loads_as_onnx(p) for p in landed)

    served = OnnxModel(
        "digits", tmp_path / "dest", digest, RuntimeOptions(model_key_file=tmp_path / "key")
    )
    served.load()
    features = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    plain = ort.InferenceSession(str(tmp_path / "plain" / "model.onnx"))
    expected = plain.run(None, {"input": features})[0]
    np.testing.assert_allclose(served.predict({"input": features})[0], expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        pytest.param(bytes(range(1, 33)), "ModelKeyInvalid", id="wrong-key"),
        pytest.param(None, "ModelKeyMissing", id="no-key"),
    ],
)
def test_wrong_or_missing_key_fails_the_fetch_with_its_reason(
    tmp_path: Path, env_log: Path, key: bytes | None, reason: str
) -> None:
    digest = write_sealed_artifact(tmp_path / "sealed", KEY)
    extra = []
    if key is not None:
        (tmp_path / "key").write_bytes(key)
        extra = ["--model-key-file", str(tmp_path / "key")]
    code = fetch(str(tmp_path / "sealed"), digest, tmp_path / "cache", tmp_path / "dest", *extra)
    assert code == 1
    assert termination(tmp_path)["reason"] == reason
    assert not (tmp_path / "dest" / "manifest.json").exists()
    assert KEY.hex() not in (tmp_path / "termination.json").read_text()


def test_a_key_for_a_plaintext_artifact_is_refused(tmp_path: Path, env_log: Path) -> None:
    digest = write_artifact(tmp_path / "plain")
    (tmp_path / "key").write_bytes(KEY)
    code = fetch(
        str(tmp_path / "plain"),
        digest,
        tmp_path / "cache",
        tmp_path / "dest",
        "--model-key-file",
        str(tmp_path / "key"),
    )
    assert code == 1 and termination(tmp_path)["reason"] == "ModelNotEncrypted"
    assert "dest" not in cache_contents(tmp_path)


def test_server_with_the_wrong_key_stays_unready_with_the_reason(tmp_path: Path) -> None:
    digest = write_sealed_artifact(tmp_path / "sealed", KEY)
    (tmp_path / "key").write_bytes(bytes(32))
    served = OnnxModel(
        "digits", tmp_path / "sealed", digest, RuntimeOptions(model_key_file=tmp_path / "key")
    )
    with pytest.raises(ArtifactError, match="ModelKeyInvalid"):
        served.load()
    assert not served.ready


def test_encrypted_model_with_external_data_opens_in_memory(tmp_path: Path) -> None:
    """Weights kept in model.onnx.data (the form large exports take) are sealed too and handed
    to onnxruntime from memory, under the name the graph's external_data refers to."""
    folder = tmp_path / "external"
    write_artifact(folder, seed=6)
    reference = ort.InferenceSession(str(folder / "model.onnx"))
    model = onnx.load(str(folder / "model.onnx"))
    onnx.save_model(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    assert (folder / "model.onnx.data").stat().st_size > 1000
    sealed = encryption.seal_files(folder, ["model.onnx", "model.onnx.data"], KEY)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {
        name: {
            "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest(),
            "sizeBytes": (folder / name).stat().st_size,
        }
        for name in sealed
    }
    manifest["serving"]["file"] = "model.onnx.enc"
    manifest["encryption"] = encryption.sealing_document(sealed)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "key").write_bytes(KEY)
    served = OnnxModel(
        "digits", folder, manifest_digest(manifest), RuntimeOptions(model_key_file=tmp_path / "key")
    )
    served.load()
    features = np.ones((2, 64), dtype=np.float32)
    np.testing.assert_allclose(
        served.predict({"input": features})[0],
        reference.run(None, {"input": features})[0],
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    ("flag", "content", "reason"),
    [
        pytest.param("--encryption-key", b"short", "EncryptionKeyInvalid", id="short-aes-key"),
        pytest.param("--signing-key", b"not a pem", "SigningKeyInvalid", id="garbage-ec-key"),
    ],
)
def test_trainer_refuses_an_unusable_key_before_training(
    tmp_path: Path, trainer_runner: TrainerRunner, flag: str, content: bytes, reason: str
) -> None:
    (tmp_path / "key").write_bytes(content)
    run = trainer_runner(
        tmp_path / "out",
        "--model",
        "mlp",
        "--dataset",
        "builtin:digits",
        "--epochs",
        "1",
        flag,
        str(tmp_path / "key"),
    )
    assert run.returncode == 2
    assert run.termination["reason"] == reason
    assert " epoch " not in run.stdout
    assert content.decode() not in run.stderr
