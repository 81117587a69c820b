"""From Nodes and inference pods to the sites the rollout planner reads, why a pod will not
become healthy, and the revision history."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fogline.api.conditions import rfc3339
from fogline.api.edgedeployment import EdgeDeployment
from fogline.api.labels import MAINTENANCE_LABEL, UPDATE_LOCK_ANNOTATION
from fogline.edge.daemonsets import DIGEST_ANNOTATION, ModelRef, daemonset_name
from fogline.edge.observe import (
    analysis_targets,
    observe_sites,
    pod_essence,
    pod_failure,
    resolve_model,
    workload_refusal,
)
from fogline.edge.status import analysis_status, next_history, rollback_targets
from fogline.rollout import NodeObservation, PodObservation, SiteObservation
from fogline.rollout.analysis import AnalysisRequest, AnalysisVerdict, VerdictPhase, WaveAnalysis

pytestmark = pytest.mark.unit

SITE = "topology.fogline.io/site"
EDGE = "node-role.kubernetes.io/edge"
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64
D = "sha256:" + "d" * 64
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# --- tiny constructors ----------------------------------------------------------------------


def edge(**overrides: Any) -> EdgeDeployment:
    spec: dict[str, Any] = {"model": {"uri": "pvc://models/m", "digest": A}, **overrides}
    return EdgeDeployment.from_body(
        {"metadata": {"name": "shop", "namespace": "edge"}, "spec": spec}
    )


def node(
    name: str,
    site: str | None,
    *,
    ready: bool = True,
    edge_role: bool = True,
    locked: bool = False,
    maintenance: bool = False,
) -> dict[str, Any]:
    labels: dict[str, str] = {}
    if site is not None:
        labels[SITE] = site
    if edge_role:
        labels[EDGE] = "true"
    if maintenance:
        labels[MAINTENANCE_LABEL] = "true"
    annotations = {UPDATE_LOCK_ANNOTATION: "reboot"} if locked else {}
    return {
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def pod(
    node_name: str | None,
    digest: str = A,
    *,
    ready: bool = True,
    deleting: bool = False,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"annotations": {DIGEST_ANNOTATION: digest}}
    if deleting:
        meta["deletionTimestamp"] = rfc3339(T0)
    pod_status = dict(status or {"phase": "Running"})
    pod_status.setdefault("conditions", [{"type": "Ready", "status": str(ready)}])
    return {"metadata": meta, "spec": {"nodeName": node_name}, "status": pod_status}


def waiting(reason: str) -> dict[str, Any]:
    return {"state": {"waiting": {"reason": reason}}}


def terminated(exit_code: int) -> dict[str, Any]:
    return {"state": {"terminated": {"exitCode": exit_code}}}


# --- observe_sites --------------------------------------------------------------------------


def test_nodes_are_grouped_into_sites_by_the_site_label() -> None:
    nodes = [node("b-2", "berlin"), node("h-1", "hamburg"), node("b-1", "berlin")]
    sites = observe_sites(edge(), nodes, [])
    assert sites == [
        SiteObservation("berlin", (NodeObservation("b-1", True), NodeObservation("b-2", True))),
        SiteObservation("hamburg", (NodeObservation("h-1", True),)),
    ]


@pytest.mark.parametrize(
    ("overrides", "nodes", "want_sites"),
    [
        pytest.param(
            {},
            [node("n1", "berlin"), node("n2", "hamburg", edge_role=False)],
            ["berlin"],
            id="node-selector",
        ),
        pytest.param({}, [node("n1", "berlin"), node("n2", None)], ["berlin"], id="no-site-label"),
        pytest.param(
            {"placement": {"sites": ["hamburg", "munich"]}},
            [node("n1", "berlin"), node("n2", "hamburg"), node("n3", "munich")],
            ["hamburg", "munich"],
            id="chosen-sites",
        ),
        pytest.param(
            {"placement": {"nodeSelector": {}}},
            [node("n1", "berlin", edge_role=False)],
            ["berlin"],
            id="empty-selector-takes-every-node",
        ),
        pytest.param(
            {"placement": {"siteLabel": "example/store"}},
            [node("n1", "berlin")],
            [],
            id="other-site-label",
        ),
    ],
)
def test_only_selected_nodes_of_chosen_sites_are_observed(
    overrides: dict[str, Any], nodes: list[dict[str, Any]], want_sites: list[str]
) -> None:
    assert [s.name for s in observe_sites(edge(**overrides), nodes, [])] == want_sites


def test_node_readiness_and_update_lock_are_observed() -> None:
    nodes = [node("n1", "berlin", ready=False), node("n2", "berlin", locked=True)]
    (site,) = observe_sites(edge(), nodes, [])
    assert site.nodes == (
        NodeObservation("n1", ready=False, locked=False),
        NodeObservation("n2", ready=True, locked=True),
    )


def test_node_without_conditions_is_not_ready() -> None:
    bare = {"metadata": {"name": "n1", "labels": {SITE: "berlin", EDGE: "true"}}}
    (site,) = observe_sites(edge(), [bare], [])
    assert site.nodes[0].ready is False


def test_maintenance_label_on_any_node_puts_its_site_in_maintenance() -> None:
    nodes = [node("b1", "berlin"), node("b2", "berlin", maintenance=True), node("h1", "hamburg")]
    assert {s.name: s.maintenance for s in observe_sites(edge(), nodes, [])} == {
        "berlin": True,
        "hamburg": False,
    }


def test_paused_sites_are_marked_paused() -> None:
    e = edge(rollout={"pausedSites": ["hamburg"]})
    nodes = [node("b1", "berlin"), node("h1", "hamburg")]
    assert {s.name: s.paused for s in observe_sites(e, nodes, [])} == {
        "berlin": False,
        "hamburg": True,
    }


def test_pods_are_mapped_to_their_nodes() -> None:
    nodes = [node("n1", "berlin"), node("n2", "berlin"), node("n3", "berlin")]
    pods = [pod("n1", A), pod("n2", B, ready=False), pod(None, C)]
    (site,) = observe_sites(edge(), nodes, pods)
    assert [n.pod for n in site.nodes] == [
        PodObservation(A, ready=True),
        PodObservation(B, ready=False),
        None,
    ]


@pytest.mark.parametrize(
    "pods",
    [
        pytest.param([pod("n1", A, deleting=True)], id="only-pod-deleting"),
        pytest.param([], id="no-pod"),
    ],
)
def test_pod_being_deleted_counts_as_no_pod(pods: list[dict[str, Any]]) -> None:
    (site,) = observe_sites(edge(), [node("n1", "berlin")], pods)
    assert site.nodes[0].pod is None


@pytest.mark.parametrize(
    "pods",
    [
        pytest.param([pod("n1", A, deleting=True), pod("n1", B)], id="old-first"),
        pytest.param([pod("n1", B), pod("n1", A, deleting=True)], id="new-first"),
    ],
)
def test_replacement_pod_wins_over_the_one_being_deleted(pods: list[dict[str, Any]]) -> None:
    (site,) = observe_sites(edge(), [node("n1", "berlin")], pods)
    assert site.nodes[0].pod == PodObservation(B, ready=True)


# --- pod_failure ----------------------------------------------------------------------------


def fetch_failed(reason: str, last: bool = False) -> dict[str, Any]:
    """A fetch step that exited 1 with its termination message; `last`: restarted since."""
    terminated = {"exitCode": 1, "reason": "Error", "message": json.dumps({"reason": reason})}
    if last:
        return {
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": terminated},
        }
    return {"state": {"terminated": terminated}}


@pytest.mark.parametrize(
    ("status", "want"),
    [
        pytest.param({"phase": "Running"}, None, id="running"),
        pytest.param({"phase": "Failed"}, "PodFailed", id="phase-failed"),
        pytest.param(
            {"phase": "Running", "containerStatuses": [waiting("CrashLoopBackOff")]},
            "CrashLoopBackOff",
            id="crash-loop",
        ),
        pytest.param(
            {"phase": "Pending", "containerStatuses": [waiting("ImagePullBackOff")]},
            "ImagePullBackOff",
            id="image-pull",
        ),
        pytest.param(
            {"phase": "Pending", "containerStatuses": [waiting("ContainerCreating")]},
            None,
            id="still-creating",
        ),
        pytest.param(
            {"phase": "Pending", "initContainerStatuses": [terminated(3)]},
            "Init:FetchFailed",
            id="fetch-exited-nonzero",
        ),
        pytest.param(
            {"phase": "Pending", "initContainerStatuses": [terminated(0)]},
            None,
            id="fetch-done",
        ),
        pytest.param(
            {"phase": "Pending", "initContainerStatuses": [waiting("CrashLoopBackOff")]},
            "Init:CrashLoopBackOff",
            id="fetch-crash-loop",
        ),
        pytest.param(
            {"phase": "Pending", "initContainerStatuses": [fetch_failed("DigestMismatch")]},
            "Init:DigestMismatch",
            id="fetch-names-a-digest-mismatch",
        ),
        pytest.param(
            {
                "phase": "Pending",
                "initContainerStatuses": [fetch_failed("AccessDenied", last=True)],
            },
            "Init:AccessDenied",
            id="reason-survives-the-restart-in-last-state",
        ),
        *(
            pytest.param(
                {"phase": "Pending", "initContainerStatuses": [fetch_failed(reason)]},
                f"Init:{reason}",
                id=f"fetch-names-{reason}",
            )
            for reason in (
                "SignatureMissing",
                "SignatureInvalid",
                "SignerKeyMissing",
                "ModelKeyMissing",
                "ModelKeyInvalid",
                "ModelNotEncrypted",
            )
        ),
        pytest.param(
            {"phase": "Pending", "initContainerStatuses": [fetch_failed("Gibberish")]},
            "Init:FetchFailed",
            id="unknown-reason-stays-generic",
        ),
        pytest.param(
            {"phase": "Running", "containerStatuses": [terminated(1)]},
            None,
            id="server-exit-is-left-to-the-kubelet",
        ),
        pytest.param({}, None, id="no-status"),
    ],
)
def test_pod_failure_names_why_a_pod_will_not_become_healthy(
    status: dict[str, Any], want: str | None
) -> None:
    assert pod_failure({"status": status}) == want


def test_failing_pod_is_observed_with_its_failure() -> None:
    failing = pod(
        "n1", B, ready=False, status={"phase": "Pending", "initContainerStatuses": [terminated(1)]}
    )
    (site,) = observe_sites(edge(), [node("n1", "berlin")], [failing])
    assert site.nodes[0].pod == PodObservation(B, ready=False, failure="Init:FetchFailed")


# --- next_history ---------------------------------------------------------------------------


def entry(revision: int, digest: str, when: datetime = T0) -> dict[str, Any]:
    return {
        "revision": revision,
        "digest": digest,
        "uri": "pvc://models/m",
        "deployedAt": rfc3339(when),
    }


NOW = T0 + timedelta(hours=1)


@pytest.mark.parametrize(
    ("history", "stable", "limit", "want"),
    [
        pytest.param([], None, 10, [], id="nothing-stable-yet"),
        pytest.param([], A, 10, [entry(1, A, NOW)], id="first-stable-digest"),
        pytest.param([entry(1, A)], A, 10, [entry(1, A)], id="same-digest-adds-nothing"),
        pytest.param(
            [entry(1, A)], B, 10, [entry(2, B, NOW), entry(1, A)], id="new-digest-newest-first"
        ),
        pytest.param(
            [entry(2, B), entry(1, A)],
            A,
            10,
            [entry(3, A, NOW), entry(2, B), entry(1, A)],
            id="rollback-is-a-new-revision",
        ),
        pytest.param(
            [entry(2, B), entry(1, A)], C, 2, [entry(3, C, NOW), entry(2, B)], id="bounded"
        ),
        pytest.param(
            [entry(3, C), entry(2, B), entry(1, A)],
            C,
            2,
            [entry(3, C), entry(2, B)],
            id="lowered-limit-trims",
        ),
        pytest.param([entry(1, A)], None, 10, [entry(1, A)], id="no-stable-keeps-history"),
    ],
)
def test_history_gains_an_entry_only_when_the_stable_digest_changes(
    history: list[dict[str, Any]], stable: str | None, limit: int, want: list[dict[str, Any]]
) -> None:
    assert next_history(history, stable, "pvc://models/m", limit, NOW) == want


def test_revisions_keep_increasing_after_old_entries_fall_off() -> None:
    history: list[dict[str, Any]] = []
    for step, digest in enumerate([A, B, C, A, B]):
        history = next_history(history, digest, "pvc://models/m", 2, T0 + timedelta(hours=step))
    assert [h["revision"] for h in history] == [5, 4]
    assert [h["digest"] for h in history] == [B, A]


def test_history_input_is_not_changed() -> None:
    history = [entry(1, A)]
    next_history(history, B, "pvc://models/m", 10, NOW)[1]["digest"] = C
    assert history == [entry(1, A)]


# --- rollback_targets: what the node cache keeps for a site -------------------------------


@pytest.mark.parametrize(
    ("history", "digest", "limit", "want"),
    [
        pytest.param([], A, 3, (), id="first-rollout-has-none"),
        pytest.param([entry(2, B), entry(1, A)], C, 3, (B, A), id="new-target-keeps-all"),
        pytest.param([entry(2, B), entry(1, A)], C, 1, (B,), id="bounded-by-the-setting"),
        pytest.param([entry(2, B), entry(1, A)], B, 3, (A,), id="stable-keeps-what-came-before"),
        pytest.param(
            [entry(3, A), entry(2, B), entry(1, A)], C, 3, (A, B), id="repeats-counted-once"
        ),
        pytest.param(
            [entry(4, C), entry(3, B), entry(2, C), entry(1, A)],
            C,
            3,
            (A,),
            id="counted-from-the-oldest-entry",
        ),
    ],
)
def test_rollback_targets_are_the_history_before_the_digest(
    history: list[dict[str, Any]], digest: str, limit: int, want: tuple[str, ...]
) -> None:
    assert rollback_targets(history, digest, limit) == want


def test_rollback_targets_do_not_change_when_the_target_becomes_stable() -> None:
    """The DaemonSet template carries them: a change would restart every site for nothing."""
    history: list[dict[str, Any]] = []
    for step, digest in enumerate([A, B, C, D]):
        before = rollback_targets(history, digest, 3)
        history = next_history(history, digest, "pvc://models/m", 10, T0 + timedelta(hours=step))
        assert rollback_targets(history, digest, 3) == before
    # A rollback to B that then becomes stable keeps what came before B, not the failed D.
    before = rollback_targets(history, B, 3)
    history = next_history(history, B, "pvc://models/m", 10, NOW)
    assert rollback_targets(history, B, 3) == before == (A,)


# --- the model an EdgeDeployment follows --------------------------------------------------


def follower(rollout: dict[str, Any] | None = None) -> EdgeDeployment:
    return EdgeDeployment.from_body(
        {
            "metadata": {"name": "shop", "namespace": "edge"},
            "spec": {"model": {"fromTraining": "digits"}},
            "status": {"rollout": rollout} if rollout else {},
        }
    )


def test_a_training_deleted_mid_rollout_says_why_the_fleet_holds() -> None:
    mid = follower({"targetDigest": B, "stableDigest": A})
    reason, message = resolve_model(mid, None)  # type: ignore[misc]
    assert reason == "TrainingNotFound"
    assert "ModelTraining 'digits' does not exist" in message
    assert f"rollout toward {B[7:19]} is held" in message and "spec.model.uri" in message


def test_a_withdrawn_artifact_holds_the_fleet_on_what_it_serves() -> None:
    settled = follower({"targetDigest": A, "stableDigest": A})
    reason, message = resolve_model(settled, {"status": {}})  # type: ignore[misc]
    assert reason == "ArtifactNotReady"
    assert message.startswith("waiting for ModelTraining 'digits'")
    assert f"keep serving {A[7:19]}" in message


def test_a_published_artifact_is_the_model() -> None:
    training = {"status": {"artifact": {"uri": "pvc://models/r1", "digest": B}}}
    assert resolve_model(follower(), training) == ModelRef(uri="pvc://models/r1", digest=B)


# --- refusals of the DaemonSet controller ---------------------------------------------------


def daemonset_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "metadata": {"name": "shop-s1.17f", "uid": "e-1"},
        "involvedObject": {"kind": "DaemonSet", "name": "shop-s1-1a2b3c4d", "uid": "ds-1"},
        "type": "Warning",
        "reason": "FailedCreate",
        "message": 'Error creating: pods "shop-s1-x" is forbidden:\n violates PodSecurity',
        "source": {"component": "daemonset-controller"},
        "lastTimestamp": "2026-03-01T12:00:07Z",
    }
    event.update(overrides)
    return event


def test_a_daemonset_controller_warning_becomes_a_refusal_with_its_words_and_time() -> None:
    refusal = workload_refusal(daemonset_event())
    assert refusal is not None
    assert refusal.daemonset == "shop-s1-1a2b3c4d" and refusal.daemonset_uid == "ds-1"
    assert refusal.message == (
        'DaemonSet shop-s1-1a2b3c4d FailedCreate: Error creating: pods "shop-s1-x" is '
        "forbidden: violates PodSecurity"
    )
    assert refusal.at == T0 + timedelta(seconds=7)
    series = daemonset_event(series={"lastObservedTime": "2026-03-01T12:01:00.123456Z"})
    assert (later := workload_refusal(series)) is not None and later.newer_than(refusal)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"type": "Normal"}, id="normal"),
        pytest.param({"source": {"component": "kubelet"}}, id="other-component"),
        pytest.param({"involvedObject": {"kind": "Pod", "name": "p"}}, id="not-a-daemonset"),
    ],
)
def test_other_events_are_no_refusal(overrides: dict[str, Any]) -> None:
    assert workload_refusal(daemonset_event(**overrides)) is None


def test_a_site_carries_the_refusal_of_its_own_daemonset() -> None:
    refusal = workload_refusal(
        daemonset_event(involvedObject={"kind": "DaemonSet", "name": daemonset_name("shop", "s1")})
    )
    assert refusal is not None
    nodes = [node("n1", "s1"), node("n2", "s2")]
    sites = observe_sites(edge(), nodes, [], {refusal.daemonset: refusal})
    assert [(s.name, s.refusal) for s in sites] == [("s1", refusal.message), ("s2", None)]
    assert sites[0].blocked == refusal.message  # n1 has no pod


# -- rollout analysis: which pods are sampled, and what status shows ------------------------

WAVE_DIGEST = "sha256:" + "b" * 64
STABLE_DIGEST = "sha256:" + "a" * 64


def _edge_pod(
    name: str, node: str, digest: str, ip: str | None = "10.0.0.1", ready: bool = True
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": {DIGEST_ANNOTATION: digest}},
        "spec": {"nodeName": node},
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def _sites(*names_and_nodes: tuple[str, int]) -> list[SiteObservation]:
    return [
        SiteObservation(name, tuple(NodeObservation(f"{name}-{i}", True) for i in range(count)))
        for name, count in names_and_nodes
    ]


def test_analysis_samples_every_site_before_any_twice_up_to_max_pods() -> None:
    sites = _sites(("a", 3), ("b", 1), ("c", 2), ("d", 2))
    pods = [
        _edge_pod(f"p-{node.name}", node.name, WAVE_DIGEST if s.name in "ab" else STABLE_DIGEST)
        for s in sites
        for node in s.nodes
    ]
    request = AnalysisRequest(1, WAVE_DIGEST, ("a", "b"), ("c", "d"))
    targets = analysis_targets(sites, pods, request, STABLE_DIGEST, 8080, max_pods=3)
    wave = [(t.site, t.name) for t in targets if not t.baseline]
    baseline = [(t.site, t.name) for t in targets if t.baseline]
    assert wave == [("a", "p-a-0"), ("b", "p-b-0"), ("a", "p-a-1")]
    assert baseline == [("c", "p-c-0"), ("d", "p-d-0"), ("c", "p-c-1")]
    assert {(t.address, t.port) for t in targets} == {("10.0.0.1", 8080)}
    # The pod index keeps essences: they carry what the sampling reads.
    kept = [pod_essence(p) for p in pods]
    assert analysis_targets(sites, kept, request, STABLE_DIGEST, 8080, max_pods=3) == targets


def test_analysis_samples_only_ready_pods_with_an_address_on_the_digest_of_their_role() -> None:
    sites = _sites(("a", 4))
    pods = [
        _edge_pod("old", "a-0", STABLE_DIGEST),
        _edge_pod("unready", "a-1", WAVE_DIGEST, ready=False),
        _edge_pod("no-ip", "a-2", WAVE_DIGEST, ip=None),
        _edge_pod("good", "a-3", WAVE_DIGEST),
    ]
    request = AnalysisRequest(0, WAVE_DIGEST, ("a",))
    targets = analysis_targets(sites, pods, request, STABLE_DIGEST, 8080, max_pods=5)
    assert [t.name for t in targets] == ["good"]


def _analysis(wave: int, phase: VerdictPhase) -> WaveAnalysis:
    verdict = AnalysisVerdict(phase, NOW, requests=40, pods=1, message=phase)
    return WaveAnalysis(wave, WAVE_DIGEST, verdict)


def test_analysis_status_keeps_the_last_twenty_finished_waves_newest_first() -> None:
    status = None
    for wave in range(25):
        status = analysis_status(status, None, _analysis(wave, "Running"), NOW)
        status = analysis_status(status, _analysis(wave, "Passed"), None, NOW)
    assert status is not None
    assert status["phase"] == "Passed" and status["wave"] == 24
    assert [w["wave"] for w in status["waves"]] == list(range(24, 4, -1))


def test_a_wave_that_ends_with_its_window_open_is_shown_inconclusive() -> None:
    status = analysis_status(None, _analysis(0, "Running"), None, NOW)
    assert status is not None
    assert status["phase"] == "Inconclusive"
    assert status["waves"][0]["phase"] == "Inconclusive"
    assert status["message"].startswith("the wave ended before its window did")
