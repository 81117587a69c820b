"""The fleet at scale, without a cluster: the indexes' essences of Nodes, pods and DaemonSets
drive the same plan as whole bodies; status stays within the CRD's bounds and small at
1,000 sites; only progress may wait to be written."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from fogline.api.edgedeployment import EdgeDeployment
from fogline.api.labels import MAINTENANCE_LABEL, UPDATE_LOCK_ANNOTATION
from fogline.edge.daemonsets import DIGEST_ANNOTATION, TEMPLATE_HASH_ANNOTATION
from fogline.edge.observe import daemonset_essence, node_essence, observe_sites, pod_essence
from fogline.edge.status import MAX_SITE_ROWS, bounded_site_rows, build_status, progress_only
from fogline.rollout import RolloutMemory, RolloutPolicy, plan_rollout
from fogline.rollout.planner import site_names_text

pytestmark = pytest.mark.unit

SITE = "topology.fogline.io/site"
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MANAGED = [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {"f:x": {}}}}]


def edge(**rollout: Any) -> EdgeDeployment:
    spec = {"model": {"uri": "https://models.example/m", "digest": B}, "rollout": rollout}
    return EdgeDeployment.from_body(
        {"metadata": {"name": "shop", "namespace": "edge"}, "spec": spec}
    )


def full_node(
    name: str, site: str, *, ready: bool = True, locked: bool = False, maintenance: bool = False
) -> dict[str, Any]:
    """A Node as the API returns it: managed fields, many conditions, addresses, images."""
    labels = {
        SITE: site,
        "node-role.kubernetes.io/edge": "true",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
    }
    if maintenance:
        labels[MAINTENANCE_LABEL] = "true"
    annotations = {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"}
    if locked:
        annotations[UPDATE_LOCK_ANNOTATION] = "reboot"
    conditions = [
        {
            "type": t,
            "status": "False",
            "reason": f"Kubelet{t}",
            "message": "kubelet is fine",
            "lastHeartbeatTime": "2026-03-01T12:00:00Z",
        }
        for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
    ] + [
        {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": "2026-03-01T12:00:00Z",
        }
    ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": "u-" + name,
            "resourceVersion": "12345",
            "labels": labels,
            "annotations": annotations,
            "managedFields": MANAGED * 4,
        },
        "spec": {"podCIDR": "10.0.0.0/24", "taints": [{"key": "edge", "effect": "NoSchedule"}]},
        "status": {
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "images": [
                {"names": [f"registry.example/img-{i}:v1"], "sizeBytes": 10**8} for i in range(20)
            ],
            "nodeInfo": {"kubeletVersion": "v1.31.0", "osImage": "k3s"},
        },
    }


def container(
    name: str, state: dict[str, Any], last: dict[str, Any] | None = None, ready: bool = True
) -> dict[str, Any]:
    return {
        "name": name,
        "image": "registry.example/fogline-server:1",
        "imageID": "sha256:" + "9" * 64,
        "ready": ready,
        "restartCount": 3,
        "state": state,
        "lastState": last or {},
    }


def full_pod(
    name: str,
    node: str,
    digest: str,
    *,
    ready: bool = True,
    deleting: bool = False,
    failure: str | None = None,
) -> dict[str, Any]:
    """An edge pod as the API returns it; `failure`: crash, fetch (the fetch step's reason in
    its last termination message), or phase."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "edge",
        "uid": "u-" + name,
        "resourceVersion": "777",
        "labels": {"fogline.io/edge-deployment": "shop"},
        "managedFields": MANAGED * 3,
        "annotations": {DIGEST_ANNOTATION: digest, "fogline.io/uri": "https://models.example/m"},
        "ownerReferences": [{"kind": "DaemonSet", "name": "shop-x", "uid": "d"}],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-03-01T12:00:00Z"
    running = {"running": {"startedAt": "2026-03-01T11:00:00Z"}}
    init = [
        container("fetch", {"terminated": {"exitCode": 0, "reason": "Completed", "message": ""}})
    ]
    main = [container("server", running, ready=ready)]
    phase = "Running"
    if failure == "crash":
        main = [
            container(
                "server",
                {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                {"terminated": {"exitCode": 2, "reason": "Error"}},
                ready=False,
            )
        ]
    elif failure == "fetch":
        message = json.dumps({"reason": "DigestMismatch", "detail": "x" * 200})
        init = [
            container(
                "fetch",
                {"waiting": {"reason": "CrashLoopBackOff"}},
                {"terminated": {"exitCode": 1, "reason": "Error", "message": message}},
                ready=False,
            )
        ]
        phase = "Pending"
    elif failure == "phase":
        phase = "Failed"
    conditions = [
        {"type": t, "status": "True", "lastTransitionTime": "2026-03-01T11:00:00Z"}
        for t in ("PodScheduled", "Initialized", "ContainersReady")
    ]
    conditions.append({"type": "Ready", "status": "True" if ready and not failure else "False"})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "containers": [{"name": "server", "image": "x", "args": ["--port", "8080"]}],
            "volumes": [{"name": "model", "emptyDir": {}}],
        },
        "status": {
            "phase": phase,
            "conditions": conditions,
            "podIP": "10.0.0.9",
            "initContainerStatuses": init,
            "containerStatuses": main,
        },
    }


def fleet() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Six sites of three nodes in every state the planner tells apart."""
    nodes, pods = [], []
    for s in range(6):
        for n in range(3):
            name = f"edge-{s}-{n}"
            nodes.append(
                full_node(
                    name,
                    f"site-{s}",
                    ready=(s, n) != (1, 0),
                    locked=(s, n) == (2, 1),
                    maintenance=(s, n) == (3, 2),
                )
            )
            failure = {(4, 0): "crash", (4, 1): "fetch", (5, 0): "phase"}.get((s, n))
            digest = B if s == 0 else A
            pods.append(
                full_pod(f"p-{name}", name, digest, ready=(s, n) != (0, 2), failure=failure)
            )
            if (s, n) == (0, 1):
                pods.append(full_pod(f"old-{name}", name, A, deleting=True))
    nodes.append(full_node("gpu-0", "", ready=True))
    return nodes, pods


def test_the_indexed_essences_drive_the_same_plan_as_whole_bodies() -> None:
    nodes, pods = fleet()
    spec = edge(canarySites=1, maxUnavailable="50%")
    whole = observe_sites(spec, nodes, pods)
    kept = observe_sites(spec, [node_essence(n) for n in nodes], [pod_essence(p) for p in pods])
    assert kept == whole
    # The observation must not be trivially healthy, or the comparison proves little.
    assert {n.pod.failure for s in whole for n in s.nodes if n.pod} >= {
        "CrashLoopBackOff",
        "Init:DigestMismatch",
        "PodFailed",
        None,
    }
    policy = RolloutPolicy(canary_sites=1, max_unavailable="50%")
    memory = RolloutMemory(
        target_digest=A,
        stable_digest=A,
        phase="Available",
        stage="Complete",
        site_digests={f"site-{s}": A for s in range(6)},
    )
    for target in (A, B):
        assert plan_rollout(kept, policy, memory, target, T0) == plan_rollout(
            whole, policy, memory, target, T0
        )


def test_an_essence_is_a_small_part_of_its_body() -> None:
    nodes, pods = fleet()
    for body, essence in [(nodes[0], node_essence(nodes[0])), (pods[0], pod_essence(pods[0]))]:
        assert len(json.dumps(essence)) * 4 < len(json.dumps(body)), essence


def test_a_daemonset_essence_keeps_what_the_apply_compares() -> None:
    body = {
        "metadata": {
            "name": "shop-site-0",
            "uid": "ds-1",
            "generation": 7,
            "managedFields": MANAGED,
            "annotations": {
                TEMPLATE_HASH_ANNOTATION: "h1",
                "deprecated.daemonset.template.generation": "7",
            },
            "deletionTimestamp": "2026-03-01T12:00:00Z",
        },
        "spec": {"template": {"spec": {"containers": [{"name": "server"}]}}},
        "status": {"numberReady": 3},
    }
    assert daemonset_essence(body) == {
        "metadata": {
            "name": "shop-site-0",
            "uid": "ds-1",
            "generation": 7,
            "annotations": {TEMPLATE_HASH_ANNOTATION: "h1"},
            "deletionTimestamp": "2026-03-01T12:00:00Z",
        }
    }


def first_deployment_status(sites: int) -> dict[str, Any]:
    nodes = [full_node(f"edge-{s}-{n}", f"site-{s:04d}") for s in range(sites) for n in range(5)]
    spec = edge(canarySites=1, maxUnavailable="20%")
    observed = observe_sites(spec, [node_essence(n) for n in nodes], [])
    plan = plan_rollout(
        observed, RolloutPolicy(canary_sites=1, max_unavailable="20%"), RolloutMemory(), B, T0
    )
    return build_status(spec, plan, "https://models.example/m", [], T0)


def test_status_of_a_thousand_site_first_deployment_fits_the_crd_and_stays_small() -> None:
    """The first deployment's wave is every site; its message, wave and site rows are
    bounded (the CRD caps status.message at 4096 characters and wave.sites at 256)."""
    status = first_deployment_status(1000)
    assert status["wave"]["siteCount"] == 1000
    assert len(status["wave"]["sites"]) <= MAX_SITE_ROWS
    assert len(status["message"]) < 4096 and "and 990 more" in status["message"]
    assert len(status["sites"]) == MAX_SITE_ROWS and status["sitesOmitted"] == 900
    assert status["counts"]["sites"] == 1000 and status["counts"]["nodes"] == 5000
    # The planner's memory holds a digest per site: it grows with the fleet, the rest not.
    size = len(json.dumps(status, separators=(",", ":")))
    assert size < 256 * 1024, size


def test_site_rows_that_need_a_look_come_first_past_the_bound() -> None:
    rows = [{"name": f"s{i:02d}", "state": "Ready"} for i in range(10)]
    rows[7]["state"], rows[3]["state"] = "Failed", "Updating"
    kept, omitted = bounded_site_rows(rows, limit=4)
    assert [r["name"] for r in kept] == ["s00", "s01", "s03", "s07"]
    assert omitted == 6
    assert bounded_site_rows(rows[:4], limit=4) == (rows[:4], 0)


def test_only_progress_may_wait_to_be_written() -> None:
    assert progress_only({"counts": {"nodesReady": 3}, "sites": [], "sitesReady": "1/2"})
    assert not progress_only({})
    assert not progress_only({"counts": {"nodesReady": 3}, "phase": "Available"})
    assert not progress_only({"sites": [], "rollout": {"waveIndex": 2}})
    assert not progress_only({"conditions": []})


def test_messages_name_a_few_sites_and_count_the_rest() -> None:
    assert site_names_text(["a", "b"]) == "a, b"
    assert site_names_text([f"s{i}" for i in range(12)], limit=3) == "s0, s1, s2 and 9 more"
