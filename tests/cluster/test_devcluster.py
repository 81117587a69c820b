"""The dev cluster is a real control plane: the real scheduler places pods on kwok nodes by
resources, labels and taints, the real controller-manager runs Jobs, RBAC is enforced."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.conftest import ClusterHandle, wait_for

pytestmark = pytest.mark.cluster

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
EDGE_TOLERATION = {
    "key": "node-role.kubernetes.io/edge",
    "operator": "Exists",
    "effect": "NoSchedule",
}


@pytest.fixture
def ns(namespace: str) -> str:
    """A fresh namespace (tests/cluster/conftest.py), under a short name."""
    return namespace


def _pod(name: str, **spec: Any) -> dict[str, Any]:
    annotations = spec.pop("annotations", {})
    return {
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "main", "image": "example.invalid/app:1"}], **spec},
    }


def _read_pod(cluster: ClusterHandle, ns: str, name: str) -> Any:
    return client.CoreV1Api(cluster.api).read_namespaced_pod(name, ns)


def test_gpu_job_is_scheduled_on_a_gpu_node_and_succeeds(cluster: ClusterHandle, ns: str) -> None:
    batch = client.BatchV1Api(cluster.api)
    job = {
        "metadata": {"name": "train"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {"sim.fogline.io/outcome": "succeed"}},
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [GPU_TOLERATION],
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "example.invalid/trainer:1",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        },
    }
    batch.create_namespaced_job(ns, job)
    wait_for(
        lambda: (batch.read_namespaced_job("train", ns).status.succeeded or 0) >= 1,
        what="Job Succeeded",
    )
    pods = (
        client.CoreV1Api(cluster.api).list_namespaced_pod(ns, label_selector="job-name=train").items
    )
    assert pods, "the Job controller made no pod"
    node = client.CoreV1Api(cluster.api).read_node(pods[0].spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.present"] == "true"
    assert node.status.allocatable["nvidia.com/gpu"] == "4"


@pytest.mark.parametrize("site", ["site-01", "site-03"])
def test_pod_selecting_a_site_lands_on_an_edge_node_of_that_site(
    cluster: ClusterHandle, ns: str, site: str
) -> None:
    selector = {"node-role.kubernetes.io/edge": "true", "topology.fogline.io/site": site}
    client.CoreV1Api(cluster.api).create_namespaced_pod(
        ns, _pod("edge", nodeSelector=selector, tolerations=[EDGE_TOLERATION])
    )
    pod = wait_for(
        lambda: (p := _read_pod(cluster, ns, "edge")).status.phase == "Running" and p,
        what="pod Running",
    )
    node = client.CoreV1Api(cluster.api).read_node(pod.spec.node_name)
    assert node.metadata.labels["topology.fogline.io/site"] == site
    assert node.metadata.labels["node.kubernetes.io/instance-type"] == "k3s"


def test_pod_without_toleration_never_lands_on_a_tainted_node(
    cluster: ClusterHandle, ns: str
) -> None:
    client.CoreV1Api(cluster.api).create_namespaced_pod(ns, _pod("untolerated"))

    def unschedulable() -> Any:
        pod = _read_pod(cluster, ns, "untolerated")
        for cond in pod.status.conditions or []:
            if (
                cond.type == "PodScheduled"
                and cond.status == "False"
                and cond.reason == "Unschedulable"
            ):
                return cond
        return None

    cond = wait_for(unschedulable, what="the scheduler to report Unschedulable")
    assert "untolerated taint" in cond.message
    assert _read_pod(cluster, ns, "untolerated").spec.node_name is None


@pytest.mark.parametrize(
    ("outcome", "phase", "ready"),
    [("never-ready", "Running", False), ("crashloop", "Running", False), ("fail", "Failed", False)],
)
def test_kwok_stages_make_chosen_pods_misbehave(
    cluster: ClusterHandle, ns: str, outcome: str, phase: str, ready: bool
) -> None:
    pod = _pod(
        "steered",
        tolerations=[EDGE_TOLERATION],
        nodeSelector={"node-role.kubernetes.io/edge": "true"},
        restartPolicy="Never" if outcome == "fail" else "Always",
        annotations={"sim.fogline.io/outcome": outcome},
    )
    client.CoreV1Api(cluster.api).create_namespaced_pod(ns, pod)
    seen = wait_for(
        lambda: (p := _read_pod(cluster, ns, "steered")).status.phase == phase and p, what=phase
    )
    conditions = {c.type: c.status for c in seen.status.conditions or []}
    assert conditions.get("Ready") == str(ready)
    if outcome == "crashloop":
        assert seen.status.container_statuses[0].state.waiting.reason == "CrashLoopBackOff"


def test_running_pod_finishes_with_the_termination_message_a_test_gives(
    cluster: ClusterHandle, ns: str
) -> None:
    pod = _pod("job-like", tolerations=[GPU_TOLERATION], restartPolicy="Never")
    client.CoreV1Api(cluster.api).create_namespaced_pod(ns, pod)
    wait_for(lambda: _read_pod(cluster, ns, "job-like").status.phase == "Running", what="Running")
    cluster.steer_pod(ns, "job-like", "succeed", {"phase": "Succeeded"})
    done = wait_for(
        lambda: (p := _read_pod(cluster, ns, "job-like")).status.phase == "Succeeded" and p,
        what="Succeeded",
    )
    assert done.status.container_statuses[0].state.terminated.message == '{"phase": "Succeeded"}'


def test_service_account_without_rights_is_refused(cluster: ClusterHandle, ns: str) -> None:
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_service_account(ns, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", ns, {"spec": {"expirationSeconds": 600}}
    ).status.token
    config = client.Configuration()
    config.host = cluster.api.configuration.host
    config.ssl_ca_cert = cluster.api.configuration.ssl_ca_cert
    config.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(config) as as_nobody:
        who = client.AuthenticationV1Api(as_nobody).create_self_subject_review({})
        assert who.status.user_info.username == f"system:serviceaccount:{ns}:nobody"
        with pytest.raises(ApiException) as refused:
            client.CoreV1Api(as_nobody).list_namespaced_pod(ns)
    assert refused.value.status == 403


def test_node_annotated_not_ready_stops_reporting_ready_and_comes_back(
    cluster: ClusterHandle,
) -> None:
    core = client.CoreV1Api(cluster.api)
    name = "edge-site-02-2"

    def ready() -> str:
        node = core.read_node(name)
        return next(c.status for c in node.status.conditions if c.type == "Ready")

    core.patch_node(name, {"metadata": {"annotations": {"sim.fogline.io/node-state": "NotReady"}}})
    try:
        wait_for(lambda: ready() == "Unknown", what="node NotReady")
    finally:
        core.patch_node(name, {"metadata": {"annotations": {"sim.fogline.io/node-state": None}}})
    wait_for(lambda: ready() == "True", what="node Ready again")


@pytest.mark.parametrize(
    ("digest", "ready", "waiting"),
    [
        ("sha256:" + "ab" * 32, "True", None),
        ("sha256:deadbeef" + "0" * 56, "False", None),
        ("sha256:badc0de0" + "0" * 56, "False", "CrashLoopBackOff"),
    ],
)
def test_an_inference_pods_model_digest_decides_its_simulated_health(
    cluster: ClusterHandle, ns: str, digest: str, ready: str, waiting: str | None
) -> None:
    pod = _pod(
        "server",
        tolerations=[EDGE_TOLERATION],
        nodeSelector={"node-role.kubernetes.io/edge": "true"},
        annotations={"fogline.io/model-digest": digest},
    )
    client.CoreV1Api(cluster.api).create_namespaced_pod(ns, pod)
    seen = wait_for(
        lambda: (p := _read_pod(cluster, ns, "server")).status.phase == "Running" and p,
        what="Running",
    )
    assert {c.type: c.status for c in seen.status.conditions}["Ready"] == ready
    state = seen.status.container_statuses[0].state
    assert (state.waiting.reason if state.waiting else None) == waiting
