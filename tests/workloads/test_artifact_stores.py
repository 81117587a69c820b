"""The artifact path through the real stores: the trainer publishes to versitygw and to the
distribution registry, and the fetch step pulls from each with read-only access, refusing an
object changed after publishing and wrong credentials with the reasons the operator shows. The
bucket's training is signed and encrypted, as spec.output.signing and encryption ask."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fogline.devcluster.stores import ArtifactStores, StoreEndpoints
from fogline.workloads.fetch import main as fetch_main
from fogline.workloads.manifest import verify_artifact
from fogline.workloads.server.model import OnnxModel, RuntimeOptions
from fogline.workloads.trainer.publish import CONFIG_MEDIA_TYPE, PublishError, publish
from tests.workloads.conftest import TrainerRun, TrainerRunner, trainer_environment
from tests.workloads.served_artifacts import write_artifact, write_key_pair

MODEL_KEY = bytes(range(32))

pytestmark = pytest.mark.workloads


def writer_env(stores: StoreEndpoints) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": stores.s3_endpoint,
        "AWS_REGION": stores.region,
        "AWS_ACCESS_KEY_ID": stores.writer_access_key,
        "AWS_SECRET_ACCESS_KEY": stores.writer_secret_key,
        "FOGLINE_OCI_PLAIN_HTTP": "1",
    }


def reader_env(stores: StoreEndpoints, root: Path) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": stores.s3_endpoint,
        "AWS_REGION": stores.region,
        "AWS_ACCESS_KEY_ID": stores.reader_access_key,
        "AWS_SECRET_ACCESS_KEY": stores.reader_secret_key,
        "FOGLINE_OCI_PLAIN_HTTP": "1",
        "FOGLINE_TERMINATION_LOG": str(root / "termination-log"),
    }


def fetch(uri: str, digest: str, root: Path, env: dict[str, str], *extra: str) -> int:
    args = ["--uri", uri, "--digest", digest, "--cache-dir", str(root / "cache")]
    return fetch_main([*args, "--dest", str(root / "dest"), "--retries", "1", *extra], environ=env)


@pytest.fixture(scope="module")
def trainer_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trainer's EC key pair and an AES-256 model key, as the Secrets would hold them."""
    folder = tmp_path_factory.mktemp("keys")
    private, public = write_key_pair(folder, "trainer")
    (folder / "model.key").write_bytes(MODEL_KEY)
    return {"private": private, "public": public, "model": folder / "model.key"}


def reason(root: Path) -> str:
    return str(json.loads((root / "termination-log").read_text())["reason"])


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
    trainer_runner: TrainerRunner,
    artifact_stores: StoreEndpoints,
    trainer_keys: dict[str, Path],
) -> dict[str, TrainerRun]:
    """One short training published to the bucket, signed and encrypted (the trainer's
    spec.output.signing and spec.output.encryption), one signed to the registry."""
    runs = {}
    signed = ["--signing-key", str(trainer_keys["private"])]
    protected = [*signed, "--encryption-key", str(trainer_keys["model"])]
    for scheme, uri, extra in (
        ("s3", f"s3://{artifact_stores.bucket}/trainings/digits/run-1", protected),
        ("oci", f"oci://{artifact_stores.registry}/models/digits", signed),
    ):
        output = tmp_path_factory.mktemp(scheme) / "artifact"
        run = trainer_runner(
            output,
            *("--model", "mlp", "--dataset", "builtin:digits", "--epochs", "1"),
            *("--hidden-units", "32", "--artifact-uri", uri, *extra),
            env=trainer_environment(writer_env(artifact_stores)),
        )
        assert run.returncode == 0, run.stderr
        runs[scheme] = run
    return runs


def test_trainer_publishes_every_file_to_the_bucket_manifest_last(
    trained: dict[str, TrainerRun], artifact_stores: StoreEndpoints
) -> None:
    run = trained["s3"]
    artifact = run.termination["artifact"]
    assert artifact["uri"] == f"s3://{artifact_stores.bucket}/trainings/digits/run-1"
    assert artifact["digest"] == verify_artifact(run.output).digest
    listing = artifact_stores.s3_client().list_objects_v2(
        Bucket=artifact_stores.bucket, Prefix="trainings/digits/run-1/"
    )
    keys = {item["Key"].rsplit("/", 1)[1] for item in listing["Contents"]}
    assert keys == {"manifest.json", "model.sig", *run.manifest["files"]}
    # Encrypted: only the sealed model left the trainer, and the manifest says how it opens.
    assert run.manifest["serving"]["file"] == "model.onnx.enc"
    assert run.manifest["encryption"] == {
        "algorithm": "AES-256-GCM",
        "files": {"model.onnx.enc": "model.onnx"},
    }
    assert not (run.output / "model.onnx").exists()
    assert MODEL_KEY.hex() not in run.stdout + run.stderr


def test_edge_fetches_from_the_bucket_verifies_the_signature_and_serves_from_memory(
    tmp_path: Path,
    trained: dict[str, TrainerRun],
    artifact_stores: StoreEndpoints,
    trainer_keys: dict[str, Path],
) -> None:
    artifact = trained["s3"].termination["artifact"]
    env = reader_env(artifact_stores, tmp_path)
    checks = ["--signature-public-key", str(trainer_keys["public"])]
    checks += ["--model-key-file", str(trainer_keys["model"])]
    assert fetch(artifact["uri"], artifact["digest"], tmp_path, env, *checks) == 0
    assert verify_artifact(tmp_path / "dest", artifact["digest"]).digest == artifact["digest"]
    served = OnnxModel(
        "digits",
        tmp_path / "dest",
        artifact["digest"],
        RuntimeOptions(model_key_file=trainer_keys["model"]),
    )
    served.load()
    assert served.predict({"input": np.zeros((1, 64), np.float32)})[0].shape == (1, 10)


def test_trainer_pushes_an_oci_artifact_with_a_layer_per_file_and_a_real_config(
    trained: dict[str, TrainerRun], artifact_stores: StoreEndpoints
) -> None:
    import urllib.request

    run = trained["oci"]
    artifact = run.termination["artifact"]
    assert artifact["uri"] == f"oci://{artifact_stores.registry}/models/digits"
    base = f"http://{artifact_stores.registry}/v2/models/digits"
    with urllib.request.urlopen(f"{base}/tags/list", timeout=10) as reply:
        (tag,) = json.load(reply)["tags"]
    request = urllib.request.Request(
        f"{base}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        manifest = json.load(reply)
    assert manifest["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    titles = {
        layer["annotations"]["org.opencontainers.image.title"] for layer in manifest["layers"]
    }
    assert titles == {"manifest.json", "model.sig", *run.manifest["files"]}
    by_title = {
        layer["annotations"]["org.opencontainers.image.title"]: layer["digest"]
        for layer in manifest["layers"]
    }
    assert by_title["manifest.json"] == artifact["digest"]  # pulled by digest, no tag trusted


def test_edge_pulls_the_oci_artifact_by_digest(
    tmp_path: Path, trained: dict[str, TrainerRun], artifact_stores: StoreEndpoints
) -> None:
    artifact = trained["oci"].termination["artifact"]
    env = reader_env(artifact_stores, tmp_path)
    assert fetch(artifact["uri"], artifact["digest"], tmp_path, env) == 0
    assert verify_artifact(tmp_path / "dest", artifact["digest"]).digest == artifact["digest"]


def test_edge_verifies_the_signature_layer_of_the_oci_artifact(
    tmp_path: Path,
    trained: dict[str, TrainerRun],
    artifact_stores: StoreEndpoints,
    trainer_keys: dict[str, Path],
) -> None:
    """The signature travels as the image manifest's model.sig layer: the trainer's key
    verifies it, another key is refused, and a digest pushed without one is missing it."""
    artifact = trained["oci"].termination["artifact"]
    good, other = tmp_path / "good", tmp_path / "other"
    env = reader_env(artifact_stores, good)
    checks = ["--signature-public-key", str(trainer_keys["public"])]
    assert fetch(artifact["uri"], artifact["digest"], good, env, *checks) == 0

    _, stranger = write_key_pair(tmp_path, "stranger")
    env = reader_env(artifact_stores, other)
    assert (
        fetch(
            artifact["uri"], artifact["digest"], other, env, "--signature-public-key", str(stranger)
        )
        == 1
    )
    assert reason(other) == "SignatureInvalid"

    unsigned = tmp_path / "unsigned"
    digest = write_artifact(unsigned, seed=3)
    uri = f"oci://{artifact_stores.registry}/models/unsigned"
    publish(unsigned, uri, writer_env(artifact_stores))
    missing = tmp_path / "missing"
    env = reader_env(artifact_stores, missing)
    assert fetch(uri, digest, missing, env, *checks) == 1
    assert reason(missing) == "SignatureMissing"


def test_object_changed_in_the_bucket_after_publishing_is_refused_by_digest(
    tmp_path: Path, artifact_stores: StoreEndpoints
) -> None:
    folder = tmp_path / "published"
    digest = write_artifact(folder)
    uri = f"s3://{artifact_stores.bucket}/tampered/run-1"
    publish(folder, uri, writer_env(artifact_stores))
    artifact_stores.s3_client().put_object(
        Bucket=artifact_stores.bucket, Key="tampered/run-1/model.onnx", Body=b"\x08\x07swapped"
    )
    root = tmp_path / "edge"
    assert fetch(uri, digest, root, reader_env(artifact_stores, root)) == 1
    assert reason(root) == "DigestMismatch"
    assert not (root / "dest" / "manifest.json").exists()


def test_wrong_credentials_are_access_denied(
    tmp_path: Path, trained: dict[str, TrainerRun], artifact_stores: StoreEndpoints
) -> None:
    artifact = trained["s3"].termination["artifact"]
    env = reader_env(artifact_stores, tmp_path) | {"AWS_SECRET_ACCESS_KEY": "wrong"}
    assert fetch(artifact["uri"], artifact["digest"], tmp_path, env) == 1
    assert reason(tmp_path) == "AccessDenied"


def test_reader_cannot_publish(tmp_path: Path, artifact_stores: StoreEndpoints) -> None:
    folder = tmp_path / "published"
    write_artifact(folder)
    env = writer_env(artifact_stores) | {
        "AWS_ACCESS_KEY_ID": artifact_stores.reader_access_key,
        "AWS_SECRET_ACCESS_KEY": artifact_stores.reader_secret_key,
    }
    with pytest.raises(PublishError) as caught:
        publish(folder, f"s3://{artifact_stores.bucket}/by-reader", env)
    assert caught.value.reason == "AccessDenied"


STUDENT = ("--model", "mlp", "--hidden-units", "8", "--dataset", "builtin:digits")


@pytest.fixture(scope="module")
def plain_teachers(
    trained: dict[str, TrainerRun], artifact_stores: StoreEndpoints
) -> dict[str, str]:
    """The registry's plain training as a teacher on both stores (the bucket's own training
    is encrypted): the same artifact, the same digest, published to the bucket too."""
    bucket_uri = f"s3://{artifact_stores.bucket}/teachers/digits/run-1"
    publish(trained["oci"].output, bucket_uri, writer_env(artifact_stores))
    return {"s3": bucket_uri, "oci": str(trained["oci"].termination["artifact"]["uri"])}


@pytest.mark.parametrize("scheme", ["s3", "oci"])
def test_a_student_distils_from_a_teacher_fetched_by_digest_from_the_store(
    scheme: str,
    tmp_path: Path,
    trained: dict[str, TrainerRun],
    plain_teachers: dict[str, str],
    trainer_runner: TrainerRunner,
    artifact_stores: StoreEndpoints,
) -> None:
    uri, digest = plain_teachers[scheme], trained["oci"].termination["artifact"]["digest"]
    run = trainer_runner(
        tmp_path / "student",
        *STUDENT,
        *("--epochs", "1", "--teacher", uri, "--teacher-digest", digest),
        env=trainer_environment(reader_env(artifact_stores, tmp_path)),
    )
    assert run.returncode == 0, run.stderr
    assert f"teacher {uri} fetched and verified: {digest}" in run.stdout
    recorded = run.manifest["hyperparameters"]["distillation"]
    assert (recorded["teacher"], recorded["teacherDigest"]) == (uri, digest)


def test_an_encrypted_teacher_is_refused_before_training(
    tmp_path: Path,
    trained: dict[str, TrainerRun],
    trainer_runner: TrainerRunner,
    artifact_stores: StoreEndpoints,
) -> None:
    artifact = trained["s3"].termination["artifact"]
    run = trainer_runner(
        tmp_path / "student",
        *STUDENT,
        *("--teacher", artifact["uri"], "--teacher-digest", artifact["digest"]),
        env=trainer_environment(reader_env(artifact_stores, tmp_path)),
    )
    assert run.returncode == 2, run.stderr
    assert run.termination["reason"] == "TeacherEncrypted"
    assert "distil from an unencrypted artifact" in run.termination["message"]
    assert run.epoch_lines() == []


def test_a_teacher_changed_in_the_bucket_after_publishing_is_refused_before_training(
    tmp_path: Path, trainer_runner: TrainerRunner, artifact_stores: StoreEndpoints
) -> None:
    folder = tmp_path / "published"
    digest = write_artifact(folder)
    uri = f"s3://{artifact_stores.bucket}/tampered-teacher/run-1"
    publish(folder, uri, writer_env(artifact_stores))
    artifact_stores.s3_client().put_object(
        Bucket=artifact_stores.bucket,
        Key="tampered-teacher/run-1/model.onnx",
        Body=b"\x08\x07swapped",
    )
    run = trainer_runner(
        tmp_path / "student",
        *STUDENT,
        *("--teacher", uri, "--teacher-digest", digest),
        env=trainer_environment(reader_env(artifact_stores, tmp_path)),
    )
    assert run.returncode == 2, run.stderr
    assert run.termination["reason"] == "TeacherDigestMismatch"
    message = run.termination["message"]
    assert message.startswith(f"--teacher {uri}: ") and "run-1/model.onnx" in message
    assert run.epoch_lines() == []


@pytest.fixture(scope="module")
def authed_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreEndpoints]:
    """The stores again, the registry with htpasswd authentication (a bcrypt entry)."""
    stores = ArtifactStores(tmp_path_factory.mktemp("authed-stores"), registry_auth=True)
    try:
        yield stores.up()
    finally:
        stores.down()


def registry_env(stores: StoreEndpoints, root: Path, password: str | None) -> dict[str, str]:
    env = {"FOGLINE_OCI_PLAIN_HTTP": "1", "FOGLINE_TERMINATION_LOG": str(root / "termination-log")}
    if password is not None:
        env |= {"FOGLINE_OCI_USERNAME": stores.registry_username, "FOGLINE_OCI_PASSWORD": password}
    return env


def test_edge_pulls_from_a_registry_that_demands_credentials_with_those_of_its_secret(
    tmp_path: Path, authed_registry: StoreEndpoints
) -> None:
    folder = tmp_path / "published"
    digest = write_artifact(folder)
    uri = f"oci://{authed_registry.registry}/models/guarded"
    with pytest.raises(PublishError):  # the registry really asks: no credentials, no push
        publish(folder, uri, registry_env(authed_registry, tmp_path, None))
    publish(folder, uri, registry_env(authed_registry, tmp_path, authed_registry.registry_password))
    root = tmp_path / "edge"
    env = registry_env(authed_registry, root, authed_registry.registry_password)
    assert fetch(uri, digest, root, env) == 0
    assert verify_artifact(root / "dest", digest).digest == digest


@pytest.mark.parametrize("password", [None, "wrong"], ids=["no-credentials", "wrong-password"])
def test_registry_refusing_the_pull_is_access_denied(
    tmp_path: Path, authed_registry: StoreEndpoints, password: str | None
) -> None:
    folder = tmp_path / "published"
    digest = write_artifact(folder, seed=2)
    uri = f"oci://{authed_registry.registry}/models/refused"
    publish(folder, uri, registry_env(authed_registry, tmp_path, authed_registry.registry_password))
    root = tmp_path / "edge"
    assert fetch(uri, digest, root, registry_env(authed_registry, root, password)) == 1
    assert reason(root) == "AccessDenied"
