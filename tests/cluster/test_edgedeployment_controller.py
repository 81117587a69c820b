"""The EdgeDeployment controller on the real control plane with kwok edge sites: per-site
DaemonSets on K3s edge nodes, canary then waves, automatic rollback of a model that never
becomes Ready, disconnected sites, new sites, fromTraining, and clean-up."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from fogline.devcluster.prometheus import PrometheusServer, ScrapeTarget
from fogline.edge.daemonsets import daemonset_name
from fogline.edge.networkpolicy import network_policy_name
from tests.cluster.conftest import EDGE_INGRESS_CIDRS
from tests.conftest import ClusterHandle, wait_for
from tests.operator_process import OperatorProcess
from tests.workloads.test_analysis_prometheus import one_row_servers, rows_body
from tests.workloads.test_server import ServerProcess

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GROUP, VERSION = "fogline.io", "v1alpha1"
GOOD = "sha256:" + "a1" * 32
NEWER = "sha256:" + "b2" * 32
NEVER_READY = "sha256:deadbeef" + "c3" * 28  # the dev cluster's kwok never makes it Ready
SITES = ["site-01", "site-02", "site-03"]


def edge(name: str, digest: str = GOOD, **rollout: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EdgeDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "https://models.example/digits", "digest": digest},
            "placement": {"sites": SITES},
            "rollout": {"progressDeadlineSeconds": 20, **rollout},
        },
    }


class Edges:
    def __init__(self, cluster: ClusterHandle, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.custom = client.CustomObjectsApi(cluster.api)
        self.core = client.CoreV1Api(cluster.api)
        self.apps = client.AppsV1Api(cluster.api)
        self.batch = client.BatchV1Api(cluster.api)

    def create(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "edgedeployments", body
        )

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "edgedeployments", name, {"spec": spec}
        )

    def status(self, name: str) -> dict[str, Any]:
        body = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "edgedeployments", name
        )
        result: dict[str, Any] = body.get("status") or {}
        return result

    def wait_phase(self, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(name)).get("phase") == phase and s,
            timeout=timeout,
            what=f"{name} phase {phase}",
        )

    def pods(self, name: str) -> list[Any]:
        items = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"fogline.io/edgedeployment={name}"
        ).items
        return [p for p in items if p.metadata.deletion_timestamp is None]

    def node(self, name: str) -> Any:
        return self.core.read_node(name)

    def events(self, name: str) -> list[Any]:
        items = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return sorted(
            items,
            key=lambda e: (e.first_timestamp or e.event_time or 0, e.metadata.creation_timestamp),
        )


@pytest.fixture
def ed(cluster: ClusterHandle, namespace: str, operator: OperatorProcess) -> Edges:
    return Edges(cluster, namespace)


def test_fresh_deployment_serves_on_every_selected_site_behind_its_ingress_policy(
    ed: Edges,
) -> None:
    body = edge("fresh")
    body["spec"]["runtime"] = {"port": 9000}
    ed.create(body)
    status = ed.wait_phase("fresh", "Available")
    assert status["counts"] == {
        "sites": 3,
        "sitesUpdated": 3,
        "sitesReady": 3,
        "nodes": 6,
        "nodesUpdated": 6,
        "nodesReady": 6,
    }
    assert status["sitesReady"] == "3/3" and status["currentDigest"] == GOOD
    assert status["observedGeneration"] == 1
    assert [s["name"] for s in status["sites"]] == SITES
    pods = ed.pods("fresh")
    assert len(pods) == 6
    for pod in pods:
        labels = ed.node(pod.spec.node_name).metadata.labels
        assert (
            labels["node-role.kubernetes.io/edge"] == "true"
            and labels["topology.fogline.io/site"] in SITES
        )
        assert pod.metadata.annotations["fogline.io/model-digest"] == GOOD
        assert pod.spec.init_containers[0].args[:2] == [
            "--uri=https://models.example/digits",
            f"--digest={GOOD}",
        ]
        assert pod.spec.containers[0].readiness_probe.http_get.path == "/v2/health/ready"
    daemonsets = ed.apps.list_namespaced_daemon_set(ed.namespace).items
    assert sorted(d.metadata.name for d in daemonsets) == sorted(
        daemonset_name("fresh", s) for s in SITES
    )
    assert all(d.spec.update_strategy.type == "OnDelete" for d in daemonsets)
    assert_fenced(ed, "fresh", 9000)


def assert_fenced(ed: Edges, edge_name: str, port: int) -> None:
    """The operator's NetworkPolicy admits only the inference port from the configured
    CIDRs to the EdgeDeployment's own pods, and an edit that opens it is reverted."""
    network = client.NetworkingV1Api(ed.cluster.api)
    name = network_policy_name(edge_name)

    def policies() -> dict[str, Any]:
        items = network.list_namespaced_network_policy(ed.namespace).items
        return {p.metadata.name: p for p in items}

    policy = wait_for(lambda: policies().get(name), what="the NetworkPolicy")
    assert policy.spec.pod_selector.match_labels == {
        "app.kubernetes.io/managed-by": "fogline",
        "fogline.io/edgedeployment": edge_name,
    }
    assert policy.spec.policy_types == ["Ingress"]
    (rule,) = policy.spec.ingress
    assert [peer.ip_block.cidr for peer in rule._from] == EDGE_INGRESS_CIDRS
    assert [(item.protocol, item.port) for item in rule.ports] == [("TCP", port)]
    (owner,) = policy.metadata.owner_references
    assert (owner.kind, owner.name, owner.controller) == ("EdgeDeployment", edge_name, True)
    selector = policy.spec.pod_selector.match_labels.items()
    assert all(selector <= p.metadata.labels.items() for p in ed.pods(edge_name))
    # Opened by hand: the operator closes it again.
    wide = {"spec": {"ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}}
    network.patch_namespaced_network_policy(name, ed.namespace, wide)

    def cidrs() -> list[str]:
        rules = policies()[name].spec.ingress
        return [peer.ip_block.cidr for peer in rules[0]._from]

    wait_for(lambda: cidrs() == EDGE_INGRESS_CIDRS, what="the operator to restore the policy")


def test_new_digest_rolls_canary_first_then_waves_within_the_limit(ed: Edges) -> None:
    ed.create(edge("waves", canarySites=1, maxUnavailable=2, pauseSeconds=2))
    ed.wait_phase("waves", "Available")
    ed.patch_spec("waves", {"model": {"digest": NEWER}})
    first_seen: dict[str, float] = {}
    most_updating = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = ed.status("waves")
        for site in status.get("sites", []):
            if site.get("digest") == NEWER and site["name"] not in first_seen:
                first_seen[site["name"]] = time.monotonic()
        most_updating = max(
            most_updating, sum(1 for s in status.get("sites", []) if s.get("state") == "Updating")
        )
        if status.get("phase") == "Available" and status.get("currentDigest") == NEWER:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"rollout did not complete: {ed.status('waves')}")
    order = sorted(first_seen, key=first_seen.__getitem__)
    assert order[0] == "site-01"  # the canary, alone
    assert first_seen[order[1]] - first_seen[order[0]] >= 1.5  # the pause after the canary
    assert most_updating <= 2
    reasons = [e.reason for e in ed.events("waves")]
    assert "WaveStarted" in reasons and "RolloutComplete" in reasons
    # Each site's fetch step keeps the digest status.history could roll it back to.
    for daemonset in ed.apps.list_namespaced_daemon_set(ed.namespace).items:
        args = daemonset.spec.template.spec.init_containers[0].args
        assert f"--keep-digest={GOOD}" in args
        assert f"--cache-owner={ed.namespace}/waves" in args


def test_model_that_never_becomes_ready_is_rolled_back_everywhere(ed: Edges) -> None:
    ed.create(edge("bad", maxUnavailable=3))
    ed.wait_phase("bad", "Available")
    ed.patch_spec("bad", {"model": {"digest": NEVER_READY}})
    status = ed.wait_phase("bad", "RolledBack", timeout=120)
    assert status["failedSite"] == "site-01"
    assert "site-01" in status["message"]
    wait_for(
        lambda: (
            all(p.metadata.annotations["fogline.io/model-digest"] == GOOD for p in ed.pods("bad"))
            and len(ed.pods("bad")) == 6
        ),
        what="every pod back on the good digest",
    )
    assert ed.status("bad")["currentDigest"] == GOOD
    # Events are posted apart from the status patch that reports the rollback: they may lag it.
    wait_for(
        lambda: {"WaveFailed", "RolledBack"} <= {e.reason for e in ed.events("bad")},
        what="the WaveFailed and RolledBack Events",
    )


def test_disconnected_site_is_skipped_and_converges_when_it_returns(ed: Edges) -> None:
    ed.create(edge("offline", maxUnavailable=3, disconnectedSites="Skip"))
    ed.wait_phase("offline", "Available")
    offline = ["edge-site-02-1", "edge-site-02-2"]
    for node in offline:
        ed.core.patch_node(
            node, {"metadata": {"annotations": {"sim.fogline.io/node-state": "NotReady"}}}
        )
    try:
        wait_for(
            lambda: any(
                s["name"] == "site-02" and not s.get("reachable", True)
                for s in ed.status("offline").get("sites", [])
            ),
            what="site-02 unreachable",
        )
        ed.patch_spec("offline", {"model": {"digest": NEWER}})
        status = wait_for(
            lambda: (s := ed.status("offline")).get("currentDigest") == NEWER and s,
            timeout=90,
            what="the rollout to finish without site-02",
        )
        site02 = next(s for s in status["sites"] if s["name"] == "site-02")
        assert site02["state"] == "Unreachable" and site02["updated"] == 0
        on_site02 = [p for p in ed.pods("offline") if p.spec.node_name in offline]
        assert {p.metadata.annotations["fogline.io/model-digest"] for p in on_site02} == {GOOD}
    finally:
        for node in offline:
            ed.core.patch_node(
                node, {"metadata": {"annotations": {"sim.fogline.io/node-state": None}}}
            )
    wait_for(
        lambda: (
            next(s for s in ed.status("offline")["sites"] if s["name"] == "site-02").get("ready")
            == 2
            and ed.status("offline")["phase"] == "Available"
        ),
        timeout=90,
        what="site-02 converged",
    )
    assert {p.metadata.annotations["fogline.io/model-digest"] for p in ed.pods("offline")} == {
        NEWER
    }


def test_locked_node_defers_its_update_until_unlocked(ed: Edges) -> None:
    ed.create(edge("locks", maxUnavailable=3))
    ed.wait_phase("locks", "Available")
    ed.core.patch_node(
        "edge-site-03-2", {"metadata": {"annotations": {"fogline.io/update-lock": "pos-closing"}}}
    )
    try:
        ed.patch_spec("locks", {"model": {"digest": NEWER}})
        wait_for(
            lambda: ed.status("locks").get("currentDigest") == NEWER,
            timeout=90,
            what="rollout done around the lock",
        )
        on_locked = [p for p in ed.pods("locks") if p.spec.node_name == "edge-site-03-2"]
        assert on_locked[0].metadata.annotations["fogline.io/model-digest"] == GOOD
    finally:
        ed.core.patch_node(
            "edge-site-03-2", {"metadata": {"annotations": {"fogline.io/update-lock": None}}}
        )
    wait_for(
        lambda: (
            all(
                p.metadata.annotations["fogline.io/model-digest"] == NEWER for p in ed.pods("locks")
            )
            and len(ed.pods("locks")) == 6
        ),
        timeout=60,
        what="the unlocked node updated",
    )


def test_new_site_gets_the_current_digest_and_deleting_cleans_up(ed: Edges) -> None:
    body = edge("grow")
    del body["spec"]["placement"]["sites"]
    ed.create(body)
    ed.wait_phase("grow", "Available")
    node = {
        "metadata": {
            "name": "edge-site-99-1",
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "node-role.kubernetes.io/edge": "true",
                "topology.fogline.io/site": "site-99",
                "node.kubernetes.io/instance-type": "k3s",
                "type": "kwok",
            },
        },
        "spec": {
            "taints": [
                {"key": "node-role.kubernetes.io/edge", "value": "true", "effect": "NoSchedule"}
            ]
        },
    }
    ed.core.create_node(node)
    try:
        wait_for(
            lambda: any(
                p.spec.node_name == "edge-site-99-1" and p.status.phase == "Running"
                for p in ed.pods("grow")
            ),
            timeout=60,
            what="a pod on the new site",
        )
        pod = next(p for p in ed.pods("grow") if p.spec.node_name == "edge-site-99-1")
        assert pod.metadata.annotations["fogline.io/model-digest"] == GOOD
        wait_for(
            lambda: any(s["name"] == "site-99" for s in ed.status("grow").get("sites", [])),
            what="site-99 in status",
        )
        ed.custom.delete_namespaced_custom_object(
            GROUP, VERSION, ed.namespace, "edgedeployments", "grow"
        )
        wait_for(
            lambda: (
                not ed.apps.list_namespaced_daemon_set(ed.namespace).items and not ed.pods("grow")
            ),
            what="DaemonSets and pods garbage-collected",
        )
    finally:
        ed.core.delete_node("edge-site-99-1")


def test_drift_on_a_daemonset_is_corrected(ed: Edges) -> None:
    ed.create(edge("drift"))
    ed.wait_phase("drift", "Available")
    name = daemonset_name("drift", "site-01")
    ed.apps.patch_namespaced_daemon_set(
        name,
        ed.namespace,
        {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "evil:1"}]}}}},
    )
    wait_for(
        lambda: (
            ed.apps.read_namespaced_daemon_set(name, ed.namespace)
            .spec.template.spec.containers[0]
            .image
            == "registry.example/fogline-server:test"
        ),
        what="the operator to restore the template",
    )


@pytest.mark.parametrize(
    ("spec", "field", "setting"),
    [
        ({"model": {"uri": "file:///etc", "digest": GOOD}}, "spec.model.uri", "allowedFileRoots"),
        (
            {"model": {"uri": "file:///var/lib/fogline/artifacts/../../../etc", "digest": GOOD}},
            "spec.model.uri",
            "allowedFileRoots",
        ),
        (
            {"runtime": {"image": "evil.example/reader:1"}},
            "spec.runtime.image",
            "allowedImagePrefixes",
        ),
    ],
    ids=["file-etc", "file-escape", "foreign-image"],
)
def test_what_the_settings_do_not_allow_is_refused_and_nothing_is_scheduled(
    ed: Edges, spec: dict[str, Any], field: str, setting: str
) -> None:
    body = edge("refused")
    body["spec"].update(spec)
    ed.create(body)
    status = ed.wait_phase("refused", "Failed")
    condition = next(c for c in status["conditions"] if c["type"] == "ModelResolved")
    assert condition["reason"] == "NotAllowed"
    assert field in condition["message"] and setting in condition["message"]
    warning = wait_for(
        lambda: next((e for e in ed.events("refused") if e.reason == "NotAllowed"), None),
        what="a NotAllowed Event",
    )
    assert warning.type == "Warning"
    assert ed.apps.list_namespaced_daemon_set(ed.namespace).items == []
    assert ed.pods("refused") == []


def test_from_training_rolls_out_the_artifact_that_passed_the_gate(ed: Edges) -> None:
    training = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelTraining",
        "metadata": {"name": "digits"},
        "spec": {
            "model": {"architecture": "mlp"},
            "dataset": {"uri": "builtin:digits"},
            "evaluation": {"threshold": 0.9},
            "output": {"uri": "file:///var/lib/fogline/artifacts"},
        },
    }
    ed.custom.create_namespaced_custom_object(
        GROUP, VERSION, ed.namespace, "modeltrainings", training
    )
    body = edge("follow")
    body["spec"]["model"] = {"fromTraining": "digits"}
    ed.create(body)
    waiting = ed.wait_phase("follow", "Pending")
    assert "waiting for ModelTraining 'digits'" in waiting["message"]
    pod = wait_for(
        lambda: next(
            iter(
                ed.core.list_namespaced_pod(
                    ed.namespace, label_selector="fogline.io/modeltraining=digits"
                ).items
            ),
            None,
        ),
        what="the training pod",
    )
    wait_for(
        lambda: (
            ed.core.read_namespaced_pod(pod.metadata.name, ed.namespace).status.phase == "Running"
        ),
        what="Running",
    )
    summary = {
        "phase": "Succeeded",
        "metrics": {"accuracy": 0.97},
        "evaluation": {"metric": "accuracy", "value": 0.97},
        "artifact": {
            "uri": "file:///var/lib/fogline/artifacts/digits/r1",
            "digest": NEWER,
            "format": "onnx",
            "sizeBytes": 1000,
            "quantized": True,
        },
    }
    ed.cluster.steer_pod(ed.namespace, pod.metadata.name, "succeed", summary)
    status = wait_for(
        lambda: (s := ed.status("follow")).get("phase") == "Available" and s,
        timeout=90,
        what="Available",
    )
    assert status["currentDigest"] == NEWER
    assert status["targetUri"] == "file:///var/lib/fogline/artifacts/digits/r1"
    assert {p.metadata.annotations["fogline.io/model-digest"] for p in ed.pods("follow")} == {NEWER}
    # The gate is the spec's, even once the Job is gone (as ttlSecondsAfterFinished does):
    # raising the threshold above the achieved metric withdraws the artifact, and the
    # follower holds on what it serves.
    for job in ed.batch.list_namespaced_job(
        ed.namespace, label_selector="fogline.io/modeltraining=digits"
    ).items:
        ed.batch.delete_namespaced_job(
            job.metadata.name, ed.namespace, propagation_policy="Background"
        )
    wait_for(
        lambda: (
            not ed.batch.list_namespaced_job(
                ed.namespace, label_selector="fogline.io/modeltraining=digits"
            ).items
        ),
        what="the training's Job gone",
    )
    ed.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        ed.namespace,
        "modeltrainings",
        "digits",
        {"spec": {"evaluation": {"threshold": 0.99}}},
    )
    trained = wait_for(
        lambda: (
            (
                t := ed.custom.get_namespaced_custom_object(
                    GROUP, VERSION, ed.namespace, "modeltrainings", "digits"
                )["status"]
            ).get("phase")
            == "Failed"
            and t
        ),
        what="the artifact withdrawn",
    )
    assert "artifact" not in trained and "artifactDigestShort" not in trained
    held = ed.wait_phase("follow", "Pending")
    assert "waiting for ModelTraining 'digits'" in held["message"]
    assert held["currentDigest"] == NEWER  # what the sites serve stays on record
    assert {p.metadata.annotations["fogline.io/model-digest"] for p in ed.pods("follow")} == {NEWER}
    # The gate is a pure function of the spec and the last run (status.lastRun): lowering
    # the threshold again publishes the same artifact, still without the Job, and the
    # follower is Available on it again without touching a site.
    generations = {
        d.metadata.name: d.metadata.generation
        for d in ed.apps.list_namespaced_daemon_set(ed.namespace).items
    }
    lowered = {"spec": {"evaluation": {"threshold": 0.9}}}
    ed.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ed.namespace, "modeltrainings", "digits", lowered
    )
    republished = wait_for(
        lambda: (
            (
                t := ed.custom.get_namespaced_custom_object(
                    GROUP, VERSION, ed.namespace, "modeltrainings", "digits"
                )["status"]
            ).get("phase")
            == "Succeeded"
            and t
        ),
        what="the artifact published again",
    )
    assert republished["artifact"]["digest"] == NEWER
    assert republished["artifact"]["uri"] == "file:///var/lib/fogline/artifacts/digits/r1"
    assert not ed.batch.list_namespaced_job(
        ed.namespace, label_selector="fogline.io/modeltraining=digits"
    ).items
    back = ed.wait_phase("follow", "Available")
    assert back["currentDigest"] == NEWER and back["targetDigest"] == NEWER
    assert {
        d.metadata.name: d.metadata.generation
        for d in ed.apps.list_namespaced_daemon_set(ed.namespace).items
    } == generations


def test_a_removed_site_leaves_the_status_and_the_status_then_stays_still(ed: Edges) -> None:
    ed.create(edge("shrink"))
    ed.wait_phase("shrink", "Available")
    ed.patch_spec("shrink", {"placement": {"sites": SITES[:2]}})
    wait_for(
        lambda: len(ed.apps.list_namespaced_daemon_set(ed.namespace).items) == 2,
        what="the third site's DaemonSet deleted",
    )
    status = wait_for(
        lambda: (s := ed.status("shrink")).get("sitesReady") == "2/2" and s, what="2/2 sites"
    )
    assert sorted(status["rollout"]["siteDigests"]) == SITES[:2]
    version = ed.custom.get_namespaced_custom_object(
        GROUP, VERSION, ed.namespace, "edgedeployments", "shrink"
    )["metadata"]["resourceVersion"]
    time.sleep(3)  # an observation window: a settled EdgeDeployment is written no more
    after = ed.custom.get_namespaced_custom_object(
        GROUP, VERSION, ed.namespace, "edgedeployments", "shrink"
    )
    assert after["metadata"]["resourceVersion"] == version, after["status"]


def test_a_corrupt_rollout_memory_becomes_a_condition_and_the_documented_reset_heals_it(
    ed: Edges,
) -> None:
    ed.create(edge("amnesia"))
    ed.wait_phase("amnesia", "Available")
    ed.custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        ed.namespace,
        "edgedeployments",
        "amnesia",
        {"status": {"rollout": {"phase": "Bogus"}}},
    )
    ed.patch_spec("amnesia", {"rollout": {"pauseSeconds": 1}})  # any trigger
    status = ed.wait_phase("amnesia", "Failed", timeout=30)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "CorruptRolloutMemory"
    assert "status.rollout" in degraded["message"] and "--subresource=status" in degraded["message"]
    assert "CorruptRolloutMemory" in [e.reason for e in ed.events("amnesia")]
    # The reset the message names.
    ed.cluster.kubectl(
        "patch",
        "edgedeployment",
        "amnesia",
        "-n",
        ed.namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"rollout":null}}',
    )
    ed.wait_phase("amnesia", "Available", timeout=60)


def test_pods_the_namespace_refuses_fail_the_site_with_the_admission_message_at_once(
    ed: Edges,
) -> None:
    """DaemonSet status has no failure condition: the DaemonSet controller's FailedCreate
    Event is what says Pod Security admission refused the pods. It becomes the site's state
    and message within seconds, not "not Ready" at a progress deadline ten minutes away. A
    file:// artifact is a hostPath, which only the `privileged` level admits."""
    ed.core.patch_namespace(
        ed.namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    body = edge("refused", progressDeadlineSeconds=600)
    body["spec"]["model"]["uri"] = "file:///var/lib/fogline/artifacts/digits/r1"
    ed.create(body)
    status = wait_for(
        lambda: (s := ed.status("refused")).get("phase") == "Failed" and s,
        timeout=30,
        what="refused Failed with the admission message",
    )
    assert "FailedCreate" in status["message"] and "violates PodSecurity" in status["message"]
    failed = next(row for row in status["sites"] if row["name"] == status["failedSite"])
    assert failed["state"] == "Failed" and "violates PodSecurity" in failed["message"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "violates PodSecurity" in degraded["message"]
    assert not ed.pods("refused")


def test_a_pod_the_quota_refuses_after_the_rollout_degrades_its_site_with_the_quota_message(
    ed: Edges,
) -> None:
    ed.create(edge("quota"))
    ed.wait_phase("quota", "Available")
    ed.core.create_namespaced_resource_quota(
        ed.namespace, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
    )
    wait_for(
        lambda: ed.core.read_namespaced_resource_quota("no-pods", ed.namespace).status.hard,
        what="the quota to be counted",
    )
    victim = ed.pods("quota")[0]
    ed.core.delete_namespaced_pod(victim.metadata.name, ed.namespace, grace_period_seconds=0)

    def degraded_by_quota() -> Any:
        status = ed.status("quota")
        rows = [r for r in status.get("sites", []) if "exceeded quota" in r.get("message", "")]
        return status.get("phase") == "Degraded" and rows and (status, rows)

    status, rows = wait_for(degraded_by_quota, timeout=30, what="quota Degraded by the quota")
    assert rows[0]["state"] == "Failed" and "exceeded quota" in status["message"]


def analysis_scrapes(operator: OperatorProcess, name: str = "scrapes") -> float:
    """The operator's count of the requests its rollout analysis made: to edge servers
    (`scrapes`), or to the Prometheus query API (`prometheus_queries`)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(operator.metrics())
        for sample in family.samples
        if sample.name == f"fogline_analysis_{name}_total"
    )


def test_an_analysis_that_reads_no_metrics_waits_then_its_fail_policy_rolls_back(
    ed: Edges, operator: OperatorProcess
) -> None:
    """kwok's pods have addresses nothing answers on: the canary's analysis cannot read a
    metric, so it is inconclusive and the wave waits (inconclusive: Wait); switched to
    Fail, the wave fails and is rolled back, naming the site. An operator restart opens
    the window again. The scraping stays bounded: one pod of the wave and one of the
    baseline (maxPods: 1), at most one request each per 2 s."""
    ed.create(edge("gated", maxUnavailable=3, progressDeadlineSeconds=120))
    ed.wait_phase("gated", "Available")
    before, started = analysis_scrapes(operator), time.monotonic()
    analysis = {"windowSeconds": 5, "maxErrorRatio": 0.05, "maxPods": 1}
    ed.patch_spec("gated", {"model": {"digest": NEWER}, "rollout": {"analysis": analysis}})
    status = wait_for(
        lambda: (s := ed.status("gated")).get("analysis", {}).get("phase") == "Inconclusive" and s,
        timeout=90,
        what="an inconclusive analysis of the canary",
    )
    shown = status["analysis"]
    assert (shown["wave"], shown["digest"], shown["pods"], shown["baselinePods"]) == (
        0,
        NEWER,
        1,
        1,
    )
    assert shown["message"].startswith("metrics not read from ")
    assert status["phase"] == "Progressing"
    canary = next(s for s in status["sites"] if s["name"] == "site-01")
    assert canary["state"] == "Ready" and "metrics under analysis" in canary["message"]
    assert all(s["digest"] == GOOD for s in status["sites"] if s["name"] != "site-01")
    scrapes, elapsed = analysis_scrapes(operator) - before, time.monotonic() - started
    assert 2 <= scrapes <= 2 * (elapsed / 2 + 1), (scrapes, elapsed)

    # A restart loses the window's first readings (they live in the operator's memory):
    # the analysis opens again, and status says since when.
    opened = shown["startedAt"]
    operator.restart()
    restarted = time.monotonic()
    wait_for(
        lambda: ed.status("gated").get("analysis", {}).get("startedAt", "") > opened,
        timeout=60,
        what="the analysis window opened again after the restart",
    )
    assert ed.status("gated")["phase"] == "Progressing"

    ed.patch_spec("gated", {"rollout": {"analysis": {"inconclusive": "Fail"}}})
    status = ed.wait_phase("gated", "RolledBack", timeout=60)
    assert status["failedSite"] == "site-01"
    assert "site site-01: analysis inconclusive: metrics not read from" in status["message"]
    assert status["analysis"]["waves"][0]["phase"] == "Inconclusive"
    wait_for(
        lambda: (
            {"AnalysisFailed", "WaveFailed", "RolledBack"} <= {e.reason for e in ed.events("gated")}
        ),
        what="the AnalysisFailed, WaveFailed and RolledBack Events",
    )
    scrapes, elapsed = analysis_scrapes(operator), time.monotonic() - restarted
    assert 2 <= scrapes <= 2 * (elapsed / 2 + 1), (scrapes, elapsed)


@pytest.fixture(scope="module")
def metric_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Two real inference servers on loopback whose model fails requests of two rows: what
    Prometheus scrapes in the kwok pods' name (kwok runs no process)."""
    with one_row_servers(tmp_path_factory) as started:
        yield started


def keep_sending(server: ServerProcess, rows: int, stop: threading.Event) -> None:
    """Inference requests of `rows` rows until told to stop: at most 3,000, for 120 s."""
    body = rows_body(rows)
    deadline = time.monotonic() + 120
    for _ in range(3000):
        if stop.is_set() or time.monotonic() > deadline:
            return
        server.request("POST", "/v2/models/digits/infer", body)
        stop.wait(0.02)


def test_the_prometheus_source_rolls_back_a_canary_that_answers_errors(
    ed: Edges,
    operator: OperatorProcess,
    prometheus: PrometheusServer,
    metric_servers: list[ServerProcess],
) -> None:
    """The operator configured with a real Prometheus (FOGLINE_ANALYSIS_PROMETHEUS_URL) that
    scrapes real servers under the names of the EdgeDeployment's pods: the canary's pods'
    server answers 500s, the baseline's answers, and the analysis reads the error ratio
    from Prometheus and rolls the canary back, naming the value and the threshold. One
    query per sample, at most one per 5 s."""
    failing, serving = metric_servers
    ed.create(edge("scraped", maxUnavailable=3, progressDeadlineSeconds=120))
    ed.wait_phase("scraped", "Available")
    before, started = analysis_scrapes(operator, "prometheus_queries"), time.monotonic()
    analysis = {
        "source": "Prometheus",
        "windowSeconds": 5,
        "minRequests": 10,
        "maxErrorRatio": 0.1,
        "maxPods": 2,
    }
    ed.patch_spec("scraped", {"model": {"digest": NEWER}, "rollout": {"analysis": analysis}})

    def canary_pods() -> list[Any]:
        pods = ed.pods("scraped")
        new = [p for p in pods if p.metadata.annotations.get("fogline.io/model-digest") == NEWER]
        return len(new) == 2 and pods

    pods = wait_for(canary_pods, timeout=60, what="the canary's two pods")

    def server_of(pod: Any) -> ServerProcess:
        canary = pod.metadata.annotations["fogline.io/model-digest"] == NEWER
        return failing if canary else serving

    prometheus.set_targets(
        [
            ScrapeTarget(server_of(p).address, {"pod": p.metadata.name, "namespace": ed.namespace})
            for p in pods
        ]
    )
    stop = threading.Event()
    senders = [
        threading.Thread(target=keep_sending, args=(failing, 2, stop), daemon=True),
        threading.Thread(target=keep_sending, args=(serving, 1, stop), daemon=True),
    ]
    for sender in senders:
        sender.start()
    try:
        status = ed.wait_phase("scraped", "RolledBack", timeout=90)
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=30)
    assert status["failedSite"] == "site-01"
    assert "errorRatio 1 > 0.1" in status["message"], status["message"]
    shown = status["analysis"]
    failure = shown["failure"]
    assert (failure["site"], failure["metric"]) == ("site-01", "errorRatio")
    assert (failure["value"], failure["threshold"]) == (1, 0.1)
    assert (shown["phase"], shown["pods"], shown["baselinePods"]) == ("Failed", 2, 2)
    assert shown["requests"] >= 10
    assert shown["waves"][0]["phase"] == "Failed"
    queries, elapsed = (
        analysis_scrapes(operator, "prometheus_queries") - before,
        time.monotonic() - started,
    )
    assert 1 <= queries <= elapsed / 5 + 1, (queries, elapsed)
