"""The pure parts of signed and encrypted artifacts: AES-256-GCM sealing bound to the file
name, key files of the wrong size, manifest.encryption checked against the files it names,
the file list read from a model-signing bundle, and which signing keys are refused."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from fogline.workloads import encryption, signatures
from fogline.workloads.manifest import parse_manifest

pytestmark = pytest.mark.unit

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def test_sealed_bytes_open_with_the_key_and_name_they_were_sealed_with() -> None:
    sealed = encryption.seal(KEY, b"onnx graph bytes", "model.onnx")
    assert b"onnx graph bytes" not in sealed
    assert encryption.open_sealed(KEY, sealed, "model.onnx") == b"onnx graph bytes"


def test_every_sealing_draws_a_new_nonce() -> None:
    assert encryption.seal(KEY, b"same", "m") != encryption.seal(KEY, b"same", "m")


@pytest.mark.parametrize(
    ("key", "name"),
    [
        pytest.param(OTHER_KEY, "model.onnx", id="another-key"),
        pytest.param(KEY, "model.onnx.data", id="sealed-for-another-file"),
    ],
)
def test_another_key_or_file_name_is_a_clear_key_error(key: bytes, name: str) -> None:
    sealed = encryption.seal(KEY, b"graph", "model.onnx")
    with pytest.raises(encryption.ModelKeyError) as caught:
        encryption.open_sealed(key, sealed, name)
    assert caught.value.reason == encryption.KEY_INVALID
    assert "tag mismatch" in str(caught.value) and "spec.model.encryption" in str(caught.value)


def test_truncated_sealed_file_is_refused() -> None:
    with pytest.raises(encryption.ModelKeyError, match="too short"):
        encryption.open_sealed(KEY, b"\x00" * 10, "model.onnx")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(None, encryption.KEY_MISSING, id="no-file"),
        pytest.param(b"", encryption.KEY_INVALID, id="empty"),
        pytest.param(b"k" * 31, encryption.KEY_INVALID, id="31-bytes"),
        pytest.param(KEY.hex().encode(), encryption.KEY_INVALID, id="hex-text"),
    ],
)
def test_key_files_that_are_not_32_bytes_name_the_file_never_the_bytes(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(encryption.ModelKeyError) as caught:
        encryption.read_key(path)
    assert caught.value.reason == reason
    assert "spec.model.encryption.keySecret" in str(caught.value)
    if content:
        assert content.decode(errors="replace") not in str(caught.value)


def test_a_32_byte_key_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(KEY)
    assert encryption.read_key(tmp_path / "key") == KEY


def manifest_with(encryption_block: Any) -> dict[str, Any]:
    entry = {"sha256": "0" * 64, "sizeBytes": 1}
    return {
        "formatVersion": 1,
        "files": {"model.onnx.enc": entry, "extra.bin": entry},
        "serving": {
            "file": "model.onnx.enc",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}],
        },
        "encryption": encryption_block,
    }


def test_sealing_document_round_trips_through_the_manifest() -> None:
    block = encryption.sealing_document({"model.onnx.enc": "model.onnx"})
    sealing = encryption.parse_sealing(parse_manifest(manifest_with(block)))
    assert sealing == encryption.Sealing("AES-256-GCM", {"model.onnx.enc": "model.onnx"})


def test_a_manifest_without_encryption_is_plaintext() -> None:
    document = manifest_with(None)
    del document["encryption"]
    assert encryption.parse_sealing(parse_manifest(document)) is None


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        pytest.param({"algorithm": "AES-128-CBC", "files": {}}, "algorithm", id="algorithm"),
        pytest.param({"algorithm": "AES-256-GCM"}, "files", id="no-files"),
        pytest.param(
            {"algorithm": "AES-256-GCM", "files": {"missing.enc": "m"}},
            "not a listed file",
            id="unlisted-file",
        ),
        pytest.param(
            {"algorithm": "AES-256-GCM", "files": {"extra.bin": "extra"}},
            "serving file",
            id="serving-file-in-plaintext",
        ),
        pytest.param(
            {"algorithm": "AES-256-GCM", "files": {"model.onnx.enc": "../escape"}},
            "relative path",
            id="plaintext-name-escapes",
        ),
    ],
)
def test_malformed_encryption_blocks_name_the_field(block: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        encryption.parse_sealing(parse_manifest(manifest_with(block)))


def bundle(resources: list[dict[str, str]]) -> bytes:
    statement = {"predicate": {"resources": resources}}
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps({"dsseEnvelope": {"payload": payload}}).encode()


def test_signed_files_lists_the_sha256_resources_of_a_bundle() -> None:
    resources = [
        {"name": "manifest.json", "algorithm": "sha256", "digest": "ab" * 32},
        {"name": "model.onnx", "algorithm": "blake3", "digest": "cd" * 32},
    ]
    assert signatures.signed_files(bundle(resources)) == {"manifest.json": "ab" * 32}


@pytest.mark.parametrize(
    "raw", [b"not json", b"{}", b'{"dsseEnvelope": {"payload": "%%%"}}'], ids=str
)
def test_a_file_that_is_no_bundle_is_an_invalid_signature(raw: bytes) -> None:
    with pytest.raises(signatures.SignatureError) as caught:
        signatures.signed_files(raw)
    assert caught.value.reason == signatures.SIGNATURE_INVALID


def test_signing_keys_other_than_unencrypted_ec_pem_are_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    for path, problem in (
        (rsa_key, "not an elliptic-curve"),
        (locked, "unencrypted PEM"),
        (garbage, "unencrypted PEM"),
        (tmp_path / "absent.pem", "unencrypted PEM"),
    ):
        with pytest.raises(signatures.SigningKeyError, match=problem) as caught:
            signatures.check_signing_key(path)
        assert "BEGIN" not in str(caught.value)
