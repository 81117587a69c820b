"""An edge site fed from the S3 store, end to end on the real control plane: the site's
DaemonSet (as the operator builds it) runs on local-edge, its fetch step pulls the artifact
from versitygw with a read-only Secret and the server answers; with the store stopped, a
replaced pod restarts from the node cache; an object swapped in the bucket is refused and
the pod and the site row say DigestMismatch."""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from fogline.api.edgedeployment import EdgeDeployment
from fogline.devcluster.localpods import LOCAL_PORT_ANNOTATION
from fogline.devcluster.stores import ArtifactStores, StoreEndpoints
from fogline.devcluster.topology import EDGE_TAINT, LOCAL_EDGE_NODE
from fogline.edge.daemonsets import EDGE_LABEL, ModelRef, build_site_daemonset
from fogline.edge.fleet import observe_sites, pod_failure
from fogline.rollout import RolloutMemory, RolloutPolicy, plan_rollout
from fogline.settings import OperatorSettings
from fogline.workloads.trainer.publish import publish
from tests.conftest import ClusterHandle, wait_for
from tests.workloads.served_artifacts import write_artifact

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SITE = "site-01"
SETTINGS = OperatorSettings(server_image="fogline.dev/server:local", image_pull_policy="Never")


@pytest.fixture(scope="module")
def own_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArtifactStores]:
    """Stores of this module's own: the last test here stops the S3 store."""
    own = ArtifactStores(tmp_path_factory.mktemp("edge-stores"))
    own.up()
    try:
        yield own
    finally:
        own.down()


@pytest.fixture(scope="module")
def stores(own_stores: ArtifactStores) -> StoreEndpoints:
    endpoints = own_stores.read()
    assert endpoints is not None
    return endpoints


@pytest.fixture(scope="module")
def space(local_cluster: ClusterHandle, stores: StoreEndpoints) -> Iterator[str]:
    """A namespace holding the read-only Secret the edge fetch step uses."""
    name = f"edge-s3-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(local_cluster.api)
    core.create_namespace({"metadata": {"name": name}})
    keys = {
        "AWS_ACCESS_KEY_ID": stores.reader_access_key,
        "AWS_SECRET_ACCESS_KEY": stores.reader_secret_key,
    }
    core.create_namespaced_secret(
        name,
        {
            "metadata": {"name": "artifact-reader"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
        },
    )
    yield name
    core.delete_namespace(name)


def publish_artifact(stores: StoreEndpoints, folder: Path, prefix: str, seed: int) -> str:
    digest = write_artifact(folder, seed=seed)
    env = {
        "AWS_ENDPOINT_URL": stores.s3_endpoint,
        "AWS_ACCESS_KEY_ID": stores.writer_access_key,
        "AWS_SECRET_ACCESS_KEY": stores.writer_secret_key,
    }
    publish(folder, f"s3://{stores.bucket}/{prefix}", env)
    return digest


def edge_for(
    name: str, namespace: str, uri: str, digest: str, endpoint: str, **model: Any
) -> EdgeDeployment:
    access = {"endpoint": endpoint, "credentialsSecret": "artifact-reader"}
    return EdgeDeployment.from_body(
        {
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": {
                "model": {"uri": uri, "digest": digest, "access": access, **model},
                "placement": {
                    "nodeSelector": {"kubernetes.io/hostname": LOCAL_EDGE_NODE},
                    "tolerations": [
                        {"key": EDGE_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}
                    ],
                },
            },
        }
    )


def apply_site(cluster: ClusterHandle, edge: EdgeDeployment, digest: str) -> None:
    uri = edge.spec.model.uri or ""
    daemonset = build_site_daemonset(edge, SITE, ModelRef(uri=uri, digest=digest), SETTINGS)
    client.AppsV1Api(cluster.api).create_namespaced_daemon_set(edge.namespace, daemonset)


def pods_of(cluster: ClusterHandle, edge: EdgeDeployment) -> list[dict[str, Any]]:
    listed = client.CoreV1Api(cluster.api).list_namespaced_pod(
        edge.namespace, label_selector=f"{EDGE_LABEL}={edge.name}"
    )
    pods: list[dict[str, Any]] = cluster.api.sanitize_for_serialization(listed)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready_pod(cluster: ClusterHandle, edge: EdgeDeployment, other_than: str = "") -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        for pod in pods_of(cluster, edge):
            conditions = pod.get("status", {}).get("conditions") or []
            if pod["metadata"]["name"] != other_than and any(
                c["type"] == "Ready" and c["status"] == "True" for c in conditions
            ):
                return pod
        return None

    found: dict[str, Any] = wait_for(ready, timeout=120, interval=0.5, what="a Ready edge pod")
    return found


def infer(pod: dict[str, Any]) -> list[float]:
    port = int(pod["metadata"]["annotations"][LOCAL_PORT_ANNOTATION])
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{pod['metadata']['labels'][EDGE_LABEL]}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        data: list[float] = json.loads(reply.read())["outputs"][0]["data"]
    return data


def test_object_swapped_in_the_bucket_is_refused_and_the_site_row_says_so(
    local_cluster: ClusterHandle, space: str, stores: StoreEndpoints, tmp_path: Path
) -> None:
    digest = publish_artifact(stores, tmp_path / "v0", "edge/v0", seed=5)
    stores.s3_client().put_object(Bucket=stores.bucket, Key="edge/v0/model.onnx", Body=b"evil")
    edge = edge_for("swapped", space, f"s3://{stores.bucket}/edge/v0", digest, stores.s3_endpoint)
    apply_site(local_cluster, edge, digest)

    def failed() -> dict[str, Any] | None:
        return next((p for p in pods_of(local_cluster, edge) if pod_failure(p)), None)

    pod = wait_for(failed, timeout=90, interval=0.5, what="the fetch step to fail")
    assert pod_failure(pod) == "Init:DigestMismatch"
    assert not any(c.get("ready") for c in pod["status"].get("containerStatuses") or [])
    # The site row the operator writes, from the same pure observer and planner.
    core = client.CoreV1Api(local_cluster.api)
    nodes = local_cluster.api.sanitize_for_serialization(core.list_node())["items"]
    sites = observe_sites(edge, nodes, pods_of(local_cluster, edge))
    plan = plan_rollout(sites, RolloutPolicy(), RolloutMemory(), digest, datetime.now(UTC))
    (row,) = [row for row in plan.sites if row.name == SITE]
    assert row.state == "Failed" and "Init:DigestMismatch" in row.message


def test_image_volume_pod_passes_pod_security_restricted_and_serves(
    local_cluster: ClusterHandle, stores: StoreEndpoints, tmp_path: Path
) -> None:
    """The kubelet's way for oci:// artifacts: no hostPath, no root init step, so the
    namespace may enforce Pod Security `restricted`; the DaemonSet's pod is admitted, the
    node pulls the artifact from the registry, and the server verifies and serves it."""
    folder = tmp_path / "oci"
    digest = write_artifact(folder, seed=3)
    uri = f"oci://{stores.registry}/models/image-volume"
    publish(folder, uri, {"FOGLINE_OCI_PLAIN_HTTP": "1"})
    namespace = f"edge-restricted-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(local_cluster.api)
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    core.create_namespace({"metadata": {"name": namespace, "labels": labels}})
    try:
        edge = edge_for("digits", namespace, uri, digest, "", delivery="ImageVolume", access=None)
        apply_site(local_cluster, edge, digest)
        pod = ready_pod(local_cluster, edge)
        assert not any("hostPath" in volume for volume in pod["spec"]["volumes"])
        # The same artifact delivered by the fetch step (hostPath cache, root) is refused here.
        fetching = edge_for("fetching", namespace, uri, digest, "", access=None)
        template = build_site_daemonset(fetching, SITE, ModelRef(uri, digest), SETTINGS)["spec"][
            "template"
        ]
        refused = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fetching"}}
        with pytest.raises(ApiException) as caught:
            core.create_namespaced_pod(
                namespace, refused | {"spec": template["spec"]}, dry_run="All"
            )
        assert caught.value.status == 403 and "PodSecurity" in str(caught.value.body)
        assert "initContainers" not in pod["spec"]
        assert len(infer(pod)) == 10
    finally:
        core.delete_namespace(namespace)


def test_edge_pod_fetches_from_s3_serves_and_restarts_with_the_store_gone(
    local_cluster: ClusterHandle,
    space: str,
    stores: StoreEndpoints,
    own_stores: ArtifactStores,
    tmp_path: Path,
) -> None:
    digest = publish_artifact(stores, tmp_path / "v1", "edge/v1", seed=1)
    edge = edge_for("digits", space, f"s3://{stores.bucket}/edge/v1", digest, stores.s3_endpoint)
    apply_site(local_cluster, edge, digest)
    first = ready_pod(local_cluster, edge)
    assert len(infer(first)) == 10
    assert first["spec"]["initContainers"][0]["envFrom"] == [
        {"secretRef": {"name": "artifact-reader"}}
    ]
    assert "envFrom" not in first["spec"]["containers"][0]  # the server never sees the keys

    own_stores.stop_process("versitygw")  # the site loses its link to the cloud
    client.CoreV1Api(local_cluster.api).delete_namespaced_pod(first["metadata"]["name"], space)
    second = ready_pod(local_cluster, edge, other_than=first["metadata"]["name"])
    assert second["metadata"]["annotations"]["fogline.io/model-digest"] == digest
    assert len(infer(second)) == 10
