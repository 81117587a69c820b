"""Rollouts gated on what the edge servers do, end to end on the real control plane: the
operator (`fogline run`) rolls an EdgeDeployment over three sites, each with a real local edge
node whose server the dev node agent runs at its own loopback address; a load generator sends
real Open Inference requests to every Ready server; each wave's analysis scrapes the servers'
/metrics at podIP:containerPort. A second good model passes wave by wave; a correct but much
slower one (a wide CNN) and one that fails real requests are each stopped at the canary and
rolled back, with the metric, its value and the threshold in status and in an Event.

One EdgeDeployment for the module, first deployed with a good model; each test rolls it to
another digest from whatever stable digest it serves, so the tests do not depend on order."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from fogline.controllers.analysis import sample_interval
from fogline.devcluster.loadgen import FollowingLoad, digits_rows
from fogline.devcluster.localpods import pod_endpoint
from fogline.devcluster.rollout_models import failing_onnx, wide_cnn_onnx, write_onnx_artifact
from fogline.devcluster.topology import EDGE_ROLE_LABEL, LOCAL_NODE_LABEL
from fogline.edge.daemonsets import DIGEST_ANNOTATION, EDGE_LABEL
from tests.cluster.conftest import DeletedNamespaces, start_local_operator
from tests.conftest import ClusterHandle, wait_for
from tests.operator_process import OperatorProcess
from tests.workloads.served_artifacts import write_artifact

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GROUP, VERSION, PLURAL = "fogline.io", "v1alpha1", "edgedeployments"
SITES = ["site-01", "site-02", "site-03"]  # each with one local edge node (LOCAL_TOPOLOGY)
ARTIFACTS = "/var/lib/fogline/rollout-analysis"  # a node folder, as the agent maps hostPath
EDGE = "gated"
MODEL = "digits"
RATE = 20  # inference requests per second to each Ready server
WINDOW_SECONDS = 5  # the CRD's shortest window
MAX_PODS = 2
# Thresholds: the good MLPs answer in a few ms, the wide CNN about ten times slower
# (tests/workloads/test_rollout_artifacts.py measures it), the failing model never.
ANALYSIS = {
    "windowSeconds": WINDOW_SECONDS,
    "minRequests": 20,
    "maxErrorRatio": 0.05,
    "maxP99LatencyRatio": 3.0,
    "maxP99LatencyMs": 1000,
    "maxPods": MAX_PODS,
    "inconclusive": "Wait",
}
LATENCY_METRICS = {"p99LatencyRatio", "p99LatencyMs"}
# The operator's count of its /metrics scrapes of edge servers (controllers/metrics.py).
SCRAPES_METRIC = "fogline_analysis_scrapes_total"
SLACK_SECONDS = 6  # reconciles before and after a window


@dataclass
class Fleet:
    cluster: ClusterHandle
    operator: OperatorProcess
    namespace: str
    digests: dict[str, str]  # artifact name -> digest

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.cluster.api)

    def status(self) -> dict[str, Any]:
        found = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, EDGE
        )
        status: dict[str, Any] = found.get("status") or {}
        return status

    def roll_to(self, artifact: str) -> None:
        uri = f"file://{ARTIFACTS}/{self.namespace}-{artifact}"
        model = {"uri": uri, "digest": self.digests[artifact]}
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, EDGE, {"spec": {"model": model}}
        )

    def available_on(self, artifact: str) -> bool:
        status = self.status()
        return (
            status.get("phase") == "Available"
            and status.get("currentDigest") == self.digests[artifact]
            and status.get("sitesReady") == f"{len(SITES)}/{len(SITES)}"
        )

    def servers(self) -> list[str]:
        """Every Ready server of the EdgeDeployment, at podIP:containerPort."""
        core = client.CoreV1Api(self.cluster.api)
        pods = core.list_namespaced_pod(self.namespace, label_selector=f"{EDGE_LABEL}={EDGE}")
        found = []
        for pod in pods.items:
            conditions = (pod.status.conditions if pod.status else None) or []
            if pod.metadata.deletion_timestamp is None and any(
                c.type == "Ready" and c.status == "True" for c in conditions
            ):
                found.append(pod_endpoint(self.cluster.api.sanitize_for_serialization(pod)))
        return found

    def load(self) -> FollowingLoad:
        return FollowingLoad(self.servers, MODEL, digits_rows(), rate=RATE, seconds=240)

    def events(self, reason: str) -> list[str]:
        core = client.CoreV1Api(self.cluster.api)
        listed = core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={EDGE},reason={reason}"
        )
        return [e.message for e in listed.items]

    def scrapes(self) -> float:
        """What the operator's scrape counter says now, all its series together."""
        return sum(
            sample.value
            for family in text_string_to_metric_families(self.operator.metrics())
            for sample in family.samples
            if sample.name == SCRAPES_METRIC
        )


@pytest.fixture(scope="module")
def fleet(
    local_cluster: ClusterHandle,
    local_deleted_namespaces: DeletedNamespaces,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Fleet]:
    """The operator, the artifacts in a node folder, and the EdgeDeployment Available on the
    first good model in three sites (the first deployment)."""
    namespace = f"analysis-{uuid.uuid4().hex[:8]}"
    root = local_cluster.devcluster.local_root / "hostpath" / ARTIFACTS.lstrip("/")
    digests = {
        "good": write_artifact(root / f"{namespace}-good", seed=1),
        "good-retrained": write_artifact(root / f"{namespace}-good-retrained", seed=2),
        "slow": write_onnx_artifact(root / f"{namespace}-slow", wide_cnn_onnx()),
        "failing": write_onnx_artifact(root / f"{namespace}-failing", failing_onnx()),
    }
    operator = start_local_operator(
        local_cluster, tmp_path_factory.mktemp("analysis-operator"), [ARTIFACTS]
    )
    core = client.CoreV1Api(local_cluster.api)
    core.create_namespace({"metadata": {"name": namespace}})
    fleet = Fleet(local_cluster, operator, namespace, digests)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EdgeDeployment",
        "metadata": {"name": EDGE},
        "spec": {
            "model": {"uri": f"file://{ARTIFACTS}/{namespace}-good", "digest": digests["good"]},
            "modelName": MODEL,
            # A short drain: an in-place replacement (one node a site) waits for it.
            "runtime": {"drainSeconds": 1},
            "placement": {
                "sites": SITES,
                "nodeSelector": {EDGE_ROLE_LABEL: "true", LOCAL_NODE_LABEL: "true"},
            },
            # The canary site first, then the other two in one wave.
            "rollout": {"canarySites": 1, "maxUnavailable": 2, "analysis": ANALYSIS},
        },
    }
    try:
        fleet.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        with fleet.load():
            wait_for(
                lambda: fleet.available_on("good"),
                timeout=120,
                interval=0.5,
                what="the first model Available on 3 sites",
            )
        yield fleet
    finally:
        # Its pods are real processes: this waits until the agent has stopped them all.
        local_deleted_namespaces.delete(namespace, request.node.nodeid)
        operator.stop()


def _stable(fleet: Fleet) -> str:
    """The good model the fleet serves now."""
    current = fleet.status()["currentDigest"]
    return next(name for name, digest in fleet.digests.items() if digest == current)


def _rolled_back_from(fleet: Fleet, artifact: str) -> dict[str, Any] | None:
    """The status once the rollout of `artifact` was rolled back (an earlier rollback stays
    RolledBack until the operator takes up the new digest: its analysis tells them apart)."""
    status = fleet.status()
    analysis = status.get("analysis") or {}
    ours = analysis.get("digest") == fleet.digests[artifact]
    return status if ours and status.get("phase") == "RolledBack" else None


def test_a_good_model_passes_the_analysis_of_every_wave_and_reaches_every_site(
    fleet: Fleet,
) -> None:
    target = "good-retrained" if _stable(fleet) == "good" else "good"
    before = fleet.scrapes()
    with fleet.load() as load:
        fleet.roll_to(target)
        wait_for(
            lambda: fleet.available_on(target),
            timeout=150,
            interval=0.5,
            what=f"{target} Available on 3 sites after analysis",
        )
    status = fleet.status()
    analysis = status["analysis"]
    # Newest first in status; this rollout's, in wave order.
    waves = sorted(
        (w for w in analysis["waves"] if w["digest"] == fleet.digests[target]),
        key=lambda w: int(w["wave"]),
    )
    assert [w["wave"] for w in waves] == [0, 1], waves  # the canary, then the other two
    assert all(w["phase"] == "Passed" for w in waves), waves
    for wave in waves:
        assert wave["requests"] >= ANALYSIS["minRequests"]
        assert wave["results"] and all(r["passed"] for r in wave["results"]), wave
    assert len(fleet.events("AnalysisPassed")) >= 2
    # Bounded scraping: each wave reads at most maxPods of its own pods and maxPods of the
    # baseline, each at most once a sample interval while its window (and the reconciles
    # around it) lasts.
    scrapes = fleet.scrapes() - before
    per_pod = 1 + int((WINDOW_SECONDS + SLACK_SECONDS) // sample_interval(WINDOW_SECONDS))
    bound = len(waves) * 2 * MAX_PODS * per_pod
    print(f"rollout of {target}: {scrapes:.0f} scrapes for {len(waves)} waves (bound {bound})")
    assert 0 < scrapes <= bound
    served = load.snapshot()
    assert sum(r.errors for r in served.values()) == 0, [r.failures for r in served.values()]


def _rolled_back_on(fleet: Fleet, stable: str) -> bool:
    core = client.CoreV1Api(fleet.cluster.api)
    pods = core.list_namespaced_pod(fleet.namespace, label_selector=f"{EDGE_LABEL}={EDGE}").items
    digests = {(p.metadata.annotations or {}).get(DIGEST_ANNOTATION) for p in pods}
    status = fleet.status()
    return (
        status.get("phase") == "RolledBack"
        and status.get("sitesReady") == f"{len(SITES)}/{len(SITES)}"
        and digests == {fleet.digests[stable]}
    )


def _rolled_back_at_the_canary(fleet: Fleet, artifact: str, metrics: set[str]) -> dict[str, Any]:
    """Roll the fleet to `artifact` under load; it must fail the canary's analysis on one of
    `metrics` and every site must go back to the stable model. Returns status.analysis.failure."""
    stable = _stable(fleet)
    with fleet.load():
        fleet.roll_to(artifact)
        status = wait_for(
            lambda: _rolled_back_from(fleet, artifact),
            timeout=150,
            interval=0.5,
            what=f"the {artifact} model rolled back by analysis",
        )
        failure: dict[str, Any] = status["analysis"]["failure"]
        assert status["failedSite"] == SITES[0] == failure["site"]  # the canary
        assert failure["metric"] in metrics, failure
        assert failure["value"] > failure["threshold"], failure
        assert status["analysis"]["phase"] == "Failed"
        wait_for(
            lambda: _rolled_back_on(fleet, stable),
            timeout=60,
            interval=0.5,
            what=f"every site back on {stable}",
        )
    assert fleet.status()["currentDigest"] == fleet.digests[stable]
    messages = fleet.events("AnalysisFailed")
    assert any(failure["metric"] in m and SITES[0] in m for m in messages), messages
    return failure


def test_a_correct_but_much_slower_model_is_rolled_back_by_its_latency(fleet: Fleet) -> None:
    failure = _rolled_back_at_the_canary(fleet, "slow", LATENCY_METRICS)
    print(f"slow model: {failure}")


def test_a_model_that_fails_real_requests_is_rolled_back_by_its_error_ratio(
    fleet: Fleet,
) -> None:
    failure = _rolled_back_at_the_canary(fleet, "failing", {"errorRatio"})
    assert failure["value"] == 1.0 and failure["threshold"] == ANALYSIS["maxErrorRatio"]
