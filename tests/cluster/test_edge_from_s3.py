"""An edge site fed from the S3 store, end to end on the real control plane: the site's
DaemonSet (as the operator builds it) runs on local-edge, its fetch step pulls the artifact
from versitygw with a read-only Secret and the server answers; with the store stopped, a
replaced pod restarts from the node cache, and after a node restart a pod restarts from its
own cache; an object swapped in the bucket is refused and the pod and the site row say
DigestMismatch. Pod Security: each delivery and cache mode is admitted at the level the docs
state, and refused below it, by the apiserver's own admission. Through the running
operator, wrong credentials show as AccessDenied in the site row and the condition."""

from __future__ import annotations

import base64
import dataclasses
import json
import signal
import urllib.error
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
from fogline.devcluster.cluster import NODE_AGENT
from fogline.devcluster.localpods import pod_endpoint
from fogline.devcluster.nodeagent import container_log_path
from fogline.devcluster.stores import ArtifactStores, StoreEndpoints
from fogline.devcluster.topology import EDGE_TAINT, LOCAL_EDGE_NODE
from fogline.edge.daemonsets import EDGE_LABEL, ModelRef, build_site_daemonset
from fogline.edge.observe import observe_sites, pod_failure
from fogline.kube import GROUP, VERSION
from fogline.rollout import RolloutMemory, RolloutPolicy, plan_rollout
from fogline.settings import OperatorSettings
from fogline.workloads.trainer.publish import publish
from tests.cluster.conftest import CRD_DIR, _established
from tests.conftest import ClusterHandle, wait_for
from tests.operator_process import OperatorProcess
from tests.workloads.served_artifacts import write_artifact

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SITE = "site-01"
SETTINGS = OperatorSettings(server_image="fogline.dev/server:local", image_pull_policy="Never")
NODE_CACHE = dataclasses.replace(SETTINGS, edge_cache_mode="Node")


@pytest.fixture(scope="module")
def own_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArtifactStores]:
    """Stores of this module's own: the last test here stops the S3 store. The registry asks
    for credentials (htpasswd), as a production one would."""
    own = ArtifactStores(tmp_path_factory.mktemp("edge-stores"), registry_auth=True)
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
    """A namespace without a Pod Security label (privileged), as the node cache needs."""
    name = create_space(local_cluster, stores, "edge-s3")
    yield name
    client.CoreV1Api(local_cluster.api).delete_namespace(name)


def create_space(
    cluster: ClusterHandle, stores: StoreEndpoints, prefix: str, level: str | None = None
) -> str:
    """A namespace holding the read-only Secret the edge fetch step uses, enforcing the Pod
    Security `level` when one is given."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    labels = {"pod-security.kubernetes.io/enforce": level} if level else {}
    core = client.CoreV1Api(cluster.api)
    core.create_namespace({"metadata": {"name": name, "labels": labels}})
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
    return name


@pytest.fixture(scope="module")
def restricted(local_cluster: ClusterHandle, stores: StoreEndpoints) -> Iterator[str]:
    """A namespace enforcing Pod Security `restricted`, the default of hardened K3s."""
    name = create_space(local_cluster, stores, "edge-restricted", "restricted")
    yield name
    client.CoreV1Api(local_cluster.api).delete_namespace(name)


@pytest.fixture(scope="module")
def baseline(local_cluster: ClusterHandle, stores: StoreEndpoints) -> Iterator[str]:
    name = create_space(local_cluster, stores, "edge-baseline", "baseline")
    yield name
    client.CoreV1Api(local_cluster.api).delete_namespace(name)


@pytest.fixture
def edge_operator(
    local_cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """`fogline run` against the cluster whose local-edge node really runs the pods, for one
    test: the module's other tests apply their DaemonSets themselves."""
    local_cluster.kubectl(
        "apply", "--server-side", "--field-manager=fogline-tests", "-f", str(CRD_DIR)
    )
    extensions = client.ApiextensionsV1Api(local_cluster.api)
    names = ["edgedeployments.fogline.io", "modeltrainings.fogline.io"]
    wait_for(lambda: all(_established(extensions, n) for n in names), what="CRDs Established")
    env = {
        "FOGLINE_SERVER_IMAGE": SETTINGS.server_image,
        "FOGLINE_IMAGE_PULL_POLICY": SETTINGS.image_pull_policy,
    }
    process = OperatorProcess(
        local_cluster.kubeconfig, tmp_path_factory.mktemp("edge-operator"), env
    )
    process.start()
    yield process
    process.stop()


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


def apply_site(
    cluster: ClusterHandle,
    edge: EdgeDeployment,
    digest: str,
    settings: OperatorSettings = SETTINGS,
) -> None:
    uri = edge.spec.model.uri or ""
    daemonset = build_site_daemonset(edge, SITE, ModelRef(uri=uri, digest=digest), settings)
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
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
    request = urllib.request.Request(
        f"{pod_endpoint(pod)}/v2/models/{pod['metadata']['labels'][EDGE_LABEL]}/infer",
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


# What each delivery and cache mode needs, as charts/fogline/README.md states it: the level
# a namespace may enforce and still admit the pods.
OCI_URI = "oci://127.0.0.1:5000/models/digits"
S3_URI, FILE_URI = "s3://fogline-artifacts/m/1", "file:///var/lib/fogline/artifacts/m/1"
MODES: dict[str, tuple[dict[str, Any], OperatorSettings, str]] = {
    "image-volume": ({"uri": OCI_URI, "delivery": "ImageVolume"}, SETTINGS, "restricted"),
    "fetch-s3-pod-cache": ({"uri": S3_URI}, SETTINGS, "restricted"),
    "fetch-oci-pod-cache": ({"uri": OCI_URI}, SETTINGS, "restricted"),
    "fetch-pvc-pod-cache": ({"uri": "pvc://models/m/1"}, SETTINGS, "restricted"),
    "fetch-s3-node-cache": ({"uri": S3_URI}, NODE_CACHE, "privileged"),
    "fetch-file": ({"uri": FILE_URI}, SETTINGS, "privileged"),
}
LEVELS = ("privileged", "baseline", "restricted")


@pytest.mark.parametrize("level", ["baseline", "restricted"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_each_mode_is_admitted_exactly_at_the_pod_security_level_the_docs_state(
    local_cluster: ClusterHandle, baseline: str, restricted: str, mode: str, level: str
) -> None:
    """The apiserver's Pod Security admission judges the pod the DaemonSet would create (a
    dry run: admission runs, nothing is stored)."""
    model, settings, needs = MODES[mode]
    namespace = {"baseline": baseline, "restricted": restricted}[level]
    digest = "sha256:" + "5" * 64
    uri = model["uri"]
    access_endpoint = "http://127.0.0.1:1" if uri.startswith("s3://") else ""
    extra = {k: v for k, v in model.items() if k != "uri"}
    if not access_endpoint:
        extra["access"] = None
    edge = edge_for("modes", namespace, uri, digest, access_endpoint, **extra)
    ds = build_site_daemonset(edge, SITE, ModelRef(uri, digest), settings)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "modes"}}
    pod["spec"] = ds["spec"]["template"]["spec"]
    core = client.CoreV1Api(local_cluster.api)
    if LEVELS.index(level) <= LEVELS.index(needs):
        core.create_namespaced_pod(namespace, pod, dry_run="All")
        return
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, pod, dry_run="All")
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert f'violates PodSecurity "{level}:latest"' in message and "hostPath" in message


def test_image_volume_pod_passes_pod_security_restricted_and_serves(
    local_cluster: ClusterHandle, stores: StoreEndpoints, restricted: str, tmp_path: Path
) -> None:
    """The kubelet's way for oci:// artifacts: the DaemonSet's pod is admitted in a
    `restricted` namespace, the node pulls the artifact from the registry, and the server
    verifies and serves it."""
    folder = tmp_path / "oci"
    digest = write_artifact(folder, seed=3)
    uri = f"oci://{stores.registry}/models/image-volume"
    login = {"FOGLINE_OCI_USERNAME": stores.registry_username}
    login["FOGLINE_OCI_PASSWORD"] = stores.registry_password
    publish(folder, uri, {"FOGLINE_OCI_PLAIN_HTTP": "1", **login})
    with pytest.raises(urllib.error.HTTPError) as refused_pull:  # the registry really asks
        urllib.request.urlopen(f"http://{stores.registry}/v2/", timeout=10)
    assert refused_pull.value.code == 401
    auth = base64.b64encode(f"{stores.registry_username}:{stores.registry_password}".encode())
    client.CoreV1Api(local_cluster.api).create_namespaced_secret(
        restricted,
        {
            "metadata": {"name": "registry-pull"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {
                ".dockerconfigjson": json.dumps(
                    {"auths": {stores.registry: {"auth": auth.decode()}}}
                )
            },
        },
    )
    pull = {"credentialsSecret": "registry-pull"}
    edge = edge_for("digits-oci", restricted, uri, digest, "", delivery="ImageVolume", access=pull)
    apply_site(local_cluster, edge, digest)
    pod = ready_pod(local_cluster, edge)
    assert not any("hostPath" in volume for volume in pod["spec"]["volumes"])
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry-pull"}]
    assert "initContainers" not in pod["spec"]
    assert len(infer(pod)) == 10


def test_wrong_credentials_show_as_access_denied_in_the_site_row_and_the_condition(
    local_cluster: ClusterHandle,
    edge_operator: OperatorProcess,
    stores: StoreEndpoints,
    tmp_path: Path,
) -> None:
    """The operator's own DaemonSet, its fetch step given a Secret whose key the store does
    not accept: the site row and the Degraded condition name AccessDenied, long before any
    progress deadline."""
    digest = publish_artifact(stores, tmp_path / "denied", "edge/denied", seed=4)
    namespace = f"edge-denied-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(local_cluster.api)
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        wrong = {"AWS_ACCESS_KEY_ID": stores.reader_access_key, "AWS_SECRET_ACCESS_KEY": "wrong"}
        core.create_namespaced_secret(
            namespace,
            {
                "metadata": {"name": "artifact-reader"},
                "stringData": wrong,
            },
        )
        uri = f"s3://{stores.bucket}/edge/denied"
        placement = edge_for("denied", namespace, uri, digest, stores.s3_endpoint).spec.placement
        custom = client.CustomObjectsApi(local_cluster.api)
        spec = {
            "model": {
                "uri": uri,
                "digest": digest,
                "access": {"endpoint": stores.s3_endpoint, "credentialsSecret": "artifact-reader"},
            },
            "placement": {
                "nodeSelector": dict(placement.node_selector),
                "tolerations": [t.to_dict() for t in placement.tolerations],
            },
            "rollout": {"progressDeadlineSeconds": 600},
        }
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "edgedeployments",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "EdgeDeployment",
                "metadata": {"name": "denied"},
                "spec": spec,
            },
        )

        def denied() -> dict[str, Any] | None:
            status = (
                custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, "edgedeployments", "denied"
                ).get("status")
                or {}
            )
            rows = [row for row in status.get("sites") or [] if row.get("name") == SITE]
            if rows and "Init:AccessDenied" in (rows[0].get("message") or ""):
                return status
            return None

        status = wait_for(denied, timeout=90, interval=0.5, what="the site row to say AccessDenied")
        (row,) = [row for row in status["sites"] if row["name"] == SITE]
        assert row["state"] == "Failed"
        degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
        assert degraded["status"] == "True" and "Init:AccessDenied" in degraded["message"]
        assert status["phase"] == "Failed"
    finally:
        core.delete_namespace(namespace)
        # Its crash-looping pod must be gone before the next test restarts the node.
        wait_for(
            lambda: not core.list_namespace(field_selector=f"metadata.name={namespace}").items,
            timeout=90,
            what=f"namespace {namespace} to be deleted",
        )


def test_edge_pods_restart_with_the_store_gone_from_the_node_cache_and_the_pod_cache(
    local_cluster: ClusterHandle,
    space: str,
    restricted: str,
    stores: StoreEndpoints,
    own_stores: ArtifactStores,
    tmp_path: Path,
) -> None:
    """Edge autonomy in both cache modes. The node cache (hostPath, a privileged namespace)
    serves a replaced pod; the pod cache (emptyDir, a `restricted` namespace) serves the same
    pod after its node restarted, when its fetch step runs again."""
    digest = publish_artifact(stores, tmp_path / "v1", "edge/v1", seed=1)
    uri = f"s3://{stores.bucket}/edge/v1"
    node_cached = edge_for("digits", space, uri, digest, stores.s3_endpoint)
    pod_cached = edge_for("digits-pod", restricted, uri, digest, stores.s3_endpoint)
    apply_site(local_cluster, node_cached, digest, NODE_CACHE)
    apply_site(local_cluster, pod_cached, digest)
    first = ready_pod(local_cluster, node_cached)
    assert len(infer(first)) == 10
    assert first["spec"]["initContainers"][0]["envFrom"] == [
        {"secretRef": {"name": "artifact-reader"}}
    ]
    assert "envFrom" not in first["spec"]["containers"][0]  # the server never sees the keys
    own = ready_pod(local_cluster, pod_cached)
    assert len(infer(own)) == 10
    assert {"name": "cache", "emptyDir": {}} in own["spec"]["volumes"]

    own_stores.stop_process("versitygw")  # the site loses its link to the cloud
    client.CoreV1Api(local_cluster.api).delete_namespaced_pod(first["metadata"]["name"], space)
    second = ready_pod(local_cluster, node_cached, other_than=first["metadata"]["name"])
    assert second["metadata"]["annotations"]["fogline.io/model-digest"] == digest
    assert len(infer(second)) == 10

    # The node restarts (its agent shuts down, stopping every pod, and starts again): the
    # same pod runs its fetch step again, which finds the digest in the pod's own cache.
    server_id = own["status"]["containerStatuses"][0]["containerID"]
    # The folder of a pod that left while the node was down goes; those of bound pods stay.
    left = local_cluster.devcluster.local_root / "pods" / "gone_pod_0123abcd" / "volumes"
    left.mkdir(parents=True)
    local_cluster.devcluster.restart_component(NODE_AGENT, signum=signal.SIGTERM)

    def restarted() -> dict[str, Any] | None:
        # The pod's Ready condition may still be the one from before the restart while the
        # agent starts it again: only a new server process that answers counts.
        pod = ready_pod(local_cluster, pod_cached)
        if pod["status"]["containerStatuses"][0].get("containerID") == server_id:
            return None
        try:
            infer(pod)
        except OSError:
            return None
        return pod

    again = wait_for(restarted, timeout=120, interval=0.5, what="the pod to run again")
    assert not left.parent.exists()
    assert again["metadata"]["uid"] == own["metadata"]["uid"]
    assert len(infer(again)) == 10
    log_file = container_log_path(
        local_cluster.devcluster.local_root, restricted, own["metadata"]["name"], "fetch"
    )
    log = log_file.read_text()
    assert log.count("fetched ") == 1 and "cache hit" in log
