"""Signed and encrypted artifacts on the real control plane: site DaemonSets as the operator
builds them run on local-edge, their fetch step pulls from the S3 store with the read-only
Secret. Required signatures: the trainer's passes and serves; the same artifact re-signed by
another key, a file changed and re-listed under a new digest, and an unsigned artifact each fail
the site with the reason on its row, and no server ever starts for them. Encryption: after the
rollout no file of the node cache or the pod loads as an ONNX model, the server answers as the
plaintext model does, and a wrong key fails the site with Init:ModelKeyInvalid."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from kubernetes import client

from fogline.devcluster.stores import StoreEndpoints
from fogline.edge.daemonsets import EDGE_LABEL
from fogline.edge.observe import observe_sites, pod_failure
from fogline.rollout import RolloutMemory, RolloutPolicy, plan_rollout
from fogline.workloads import signatures
from fogline.workloads.manifest import manifest_digest
from fogline.workloads.trainer.publish import publish
from tests.cluster.test_edge_from_s3 import (
    NODE_CACHE,
    SITE,
    apply_site,
    edge_for,
    infer,
    pods_of,
    ready_pod,
)
from tests.conftest import ClusterHandle, wait_for
from tests.workloads.served_artifacts import write_artifact, write_key_pair, write_sealed_artifact

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MODEL_KEY = hashlib.sha256(b"fogline test model key").digest()  # 32 bytes, not all UTF-8
WRONG_KEY = hashlib.sha256(b"another key").digest()
FEATURES = [0.5] * 64


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("keys")
    return {name: write_key_pair(folder, name) for name in ("trainer", "other")}


@pytest.fixture(scope="module")
def space(
    local_cluster: ClusterHandle,
    artifact_stores: StoreEndpoints,
    keys: dict[str, tuple[Path, Path]],
) -> Iterator[str]:
    """A namespace with the read-only store Secret, the trainer's public key in a ConfigMap,
    and the model key and a wrong one as Secrets."""
    name = f"edge-sec-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(local_cluster.api)
    core.create_namespace({"metadata": {"name": name}})
    reader = {
        "AWS_ACCESS_KEY_ID": artifact_stores.reader_access_key,
        "AWS_SECRET_ACCESS_KEY": artifact_stores.reader_secret_key,
    }
    secrets = {
        "artifact-reader": {k: b64(v.encode()) for k, v in reader.items()},
        "model-key": {"key": b64(MODEL_KEY)},
        "wrong-key": {"key": b64(WRONG_KEY)},
    }
    for secret, data in secrets.items():
        core.create_namespaced_secret(name, {"metadata": {"name": secret}, "data": data})
    public_pem = keys["trainer"][1].read_text()
    core.create_namespaced_config_map(
        name, {"metadata": {"name": "signer"}, "data": {"public.pem": public_pem}}
    )
    yield name
    core.delete_namespace(name)


def upload(stores: StoreEndpoints, folder: Path, prefix: str) -> str:
    env = {
        "AWS_ENDPOINT_URL": stores.s3_endpoint,
        "AWS_ACCESS_KEY_ID": stores.writer_access_key,
        "AWS_SECRET_ACCESS_KEY": stores.writer_secret_key,
    }
    uri = f"s3://{stores.bucket}/{prefix}"
    publish(folder, uri, env)
    return uri


def site_row(cluster: ClusterHandle, edge: Any, digest: str) -> Any:
    """The site row the operator writes, from the same pure observer and planner."""
    nodes = cluster.api.sanitize_for_serialization(client.CoreV1Api(cluster.api).list_node())
    sites = observe_sites(edge, nodes["items"], pods_of(cluster, edge))
    plan = plan_rollout(sites, RolloutPolicy(), RolloutMemory(), digest, datetime.now(UTC))
    (row,) = [row for row in plan.sites if row.name == SITE]
    return row


def failed_pod(cluster: ClusterHandle, edge: Any) -> dict[str, Any]:
    def failed() -> dict[str, Any] | None:
        return next((p for p in pods_of(cluster, edge) if pod_failure(p)), None)

    found: dict[str, Any] = wait_for(failed, timeout=120, interval=0.5, what="a fetch failure")
    return found


def fetch_message(pod: dict[str, Any]) -> str:
    (fetch,) = pod["status"]["initContainerStatuses"]
    for key in ("state", "lastState"):
        terminated = (fetch.get(key) or {}).get("terminated") or {}
        if terminated.get("message"):
            message: str = json.loads(terminated["message"])["message"]
            return message
    return ""


def test_signed_artifact_serves_and_forged_ones_fail_the_site_naming_why(
    local_cluster: ClusterHandle,
    space: str,
    artifact_stores: StoreEndpoints,
    keys: dict[str, tuple[Path, Path]],
    tmp_path: Path,
) -> None:
    stores = artifact_stores
    signature = {"signature": {"publicKeyConfigMap": "signer"}}
    # The trainer's artifact, and the very same files re-signed by somebody else's key.
    good = tmp_path / "good"
    digest = write_artifact(good, seed=11)
    resigned = tmp_path / "resigned"
    shutil.copytree(good, resigned)
    signatures.sign_artifact(good, keys["trainer"][0])
    signatures.sign_artifact(resigned, keys["other"][0])
    # A file changed and re-listed, under the new digest a tamperer would pin, with the
    # trainer's signature of the original beside it.
    tampered = tmp_path / "tampered"
    shutil.copytree(good, tampered)
    model = tampered / "model.onnx"
    model.write_bytes(model.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    manifest = json.loads((tampered / "manifest.json").read_text())
    data = model.read_bytes()
    manifest["files"]["model.onnx"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "sizeBytes": len(data),
    }
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    tampered_digest = manifest_digest(manifest)
    unsigned = tmp_path / "unsigned"
    unsigned_digest = write_artifact(unsigned, seed=12)

    prefix = f"sec/{space}"
    refused = {
        "resigned": (upload(stores, resigned, f"{prefix}/resigned"), digest, "SignatureInvalid"),
        "tampered": (
            upload(stores, tampered, f"{prefix}/tampered"),
            tampered_digest,
            "SignatureInvalid",
        ),
        "unsigned": (
            upload(stores, unsigned, f"{prefix}/unsigned"),
            unsigned_digest,
            "SignatureMissing",
        ),
    }
    edges = {
        name: edge_for(name, space, uri, pinned, stores.s3_endpoint, **signature)
        for name, (uri, pinned, _) in refused.items()
    }
    for name, (_, pinned, _) in refused.items():
        apply_site(local_cluster, edges[name], pinned)
    for name, (_, pinned, reason) in refused.items():
        pod = failed_pod(local_cluster, edges[name])
        assert pod_failure(pod) == f"Init:{reason}", name
        assert not any(c.get("started") for c in pod["status"].get("containerStatuses") or [])
        row = site_row(local_cluster, edges[name], pinned)
        assert row.state == "Failed" and f"Init:{reason}" in row.message, (name, row)
    assert "differ from what it signs: manifest.json, model.onnx" in fetch_message(
        failed_pod(local_cluster, edges["tampered"])
    )
    assert "does not verify with the public key" in fetch_message(
        failed_pod(local_cluster, edges["resigned"])
    )

    # The trainer's signature of the same digest rolls out on the same node.
    uri = upload(stores, good, f"{prefix}/good")
    edge = edge_for("signed", space, uri, digest, stores.s3_endpoint, **signature)
    apply_site(local_cluster, edge, digest)
    pod = ready_pod(local_cluster, edge)
    assert len(infer(pod)) == 10
    assert site_row(local_cluster, edge, digest).state == "Ready"


def plaintext_answer(folder: Path) -> list[float]:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    result: list[float] = session.run(None, {"input": np.array([FEATURES], np.float32)})[0][
        0
    ].tolist()
    return result


def loads_as_onnx(path: Path) -> bool:
    try:
        ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime's errors share no base class worth naming
        return False
    return True


def test_encrypted_model_serves_from_memory_and_a_wrong_key_fails_the_site(
    local_cluster: ClusterHandle, space: str, artifact_stores: StoreEndpoints, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    write_artifact(plain, seed=13)
    sealed = tmp_path / "sealed"
    digest = write_sealed_artifact(sealed, MODEL_KEY, seed=13)
    uri = upload(artifact_stores, sealed, f"sec/{space}/sealed")
    edge = edge_for(
        "sealed",
        space,
        uri,
        digest,
        artifact_stores.s3_endpoint,
        encryption={"keySecret": "model-key"},
    )
    wrong = edge_for(
        "wrong-key",
        space,
        uri,
        digest,
        artifact_stores.s3_endpoint,
        encryption={"keySecret": "wrong-key"},
    )
    # The node cache mode: the hostPath that outlives pods is the cache a thief takes along.
    apply_site(local_cluster, edge, digest, NODE_CACHE)
    apply_site(local_cluster, wrong, digest, NODE_CACHE)

    pod = ready_pod(local_cluster, edge)
    np.testing.assert_allclose(infer(pod), plaintext_answer(plain), rtol=1e-5)
    # What the node holds for this artifact: its cache entry and the pod's folders.
    root = local_cluster.devcluster.local_root
    entry = root / "hostpath" / NODE_CACHE.edge_cache_dir.lstrip("/") / digest.replace(":", "-")
    files = [p for p in entry.rglob("*") if p.is_file() and not p.is_symlink()]
    for pod_folder in (root / "pods").glob(f"{space}_{pod['metadata']['name']}_*"):
        files += [p for p in pod_folder.rglob("*") if p.is_file() and not p.is_symlink()]
    assert (entry / "model.onnx.enc").is_file()
    assert any(p.name == "model.onnx.enc" for p in files)
    assert loads_as_onnx(plain / "model.onnx")  # the check can tell a model
    assert [p for p in files if loads_as_onnx(p)] == []

    failed = failed_pod(local_cluster, wrong)
    assert pod_failure(failed) == "Init:ModelKeyInvalid"
    row = site_row(local_cluster, wrong, digest)
    assert row.state == "Failed" and "Init:ModelKeyInvalid" in row.message
    assert WRONG_KEY.hex() not in json.dumps(failed) and MODEL_KEY.hex() not in json.dumps(failed)
    assert {p["metadata"]["labels"][EDGE_LABEL] for p in pods_of(local_cluster, wrong)} == {
        "wrong-key"
    }
