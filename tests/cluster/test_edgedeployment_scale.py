"""The EdgeDeployment controller at fleet scale, judged by the apiserver's audit log: on a
dev cluster of its own (30 sites x 3 kwok nodes) the operator runs as its own
ServiceAccount; a digest change must cost no re-listing and a bounded number of writes."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from itertools import pairwise
from typing import Any, NamedTuple

import pytest
from bench.fleet import (
    ApiRequest,
    FirstSeen,
    MeasuredCluster,
    audit_now,
    by_verb_and_resource,
    events_relist,
    measured_cluster,
    object_name,
)
from kubernetes import client

from fogline.api.crds import GROUP, VERSION
from fogline.controllers.written import STATUS_COALESCE_SECONDS
from fogline.devcluster import Topology

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SITES, NODES_PER_SITE = 30, 3
NODES = SITES * NODES_PER_SITE
OLD = "sha256:" + "a1" * 32
NEW = "sha256:" + "b2" * 32
WAVE_WIDTH = 6  # maxUnavailable 20% of 30 sites
WAVES = 1 + math.ceil((SITES - 1) / WAVE_WIDTH)  # the canary site, then full waves


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeasuredCluster]:
    topology = Topology(gpu_nodes=0, edge_sites=SITES, nodes_per_site=NODES_PER_SITE)
    with measured_cluster(topology, directory=tmp_path_factory.mktemp("scale")) as measured:
        yield measured


def edge(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EdgeDeployment",
        "metadata": {"name": "fleet", "namespace": namespace},
        "spec": {
            "model": {"uri": "https://models.example/digits", "digest": OLD},
            "rollout": {
                "canarySites": 1,
                "maxUnavailable": "20%",
                "pauseSeconds": 0,
                "progressDeadlineSeconds": 600,
            },
        },
    }


def available_on(digest: str) -> Any:
    def accept(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        return bool(status.get("phase") == "Available" and status.get("currentDigest") == digest)

    return accept


def wait_available(rig: MeasuredCluster, namespace: str, digest: str, change: Any = None) -> None:
    custom = client.CustomObjectsApi(rig.api)
    with FirstSeen(
        custom.list_namespaced_custom_object,
        object_name,
        available_on(digest),
        group=GROUP,
        version=VERSION,
        namespace=namespace,
        plural="edgedeployments",
    ) as seen:
        if change is not None:
            change()
        seen.wait(["fleet"], timeout=240)


def count(requests: list[ApiRequest], verb: str, resource: str) -> int:
    return sum(1 for r in requests if r.verb == verb and r.resource == resource)


class Rollout(NamedTuple):
    during: list[ApiRequest]
    after: list[ApiRequest]
    seconds: float  # how long the rollout took, reported with the status patches


@pytest.fixture(scope="module")
def rollout(rig: MeasuredCluster) -> Rollout:
    """The operator's requests during a digest change, and in a quiet spell after it."""
    namespace = "scale"
    client.CoreV1Api(rig.api).create_namespace({"metadata": {"name": namespace}})
    custom = client.CustomObjectsApi(rig.api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "edgedeployments", edge(namespace)
    )
    wait_available(rig, namespace, OLD)
    since, started = audit_now(), time.monotonic()
    wait_available(
        rig,
        namespace,
        NEW,
        lambda: custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "edgedeployments",
            "fleet",
            {"spec": {"model": {"digest": NEW}}},
        ),
    )
    until, seconds = audit_now(), time.monotonic() - started
    # An observation window, not a wait: a settled rollout must stay silent through it.
    time.sleep(5)
    return Rollout(rig.requests(since, until), rig.requests(until, audit_now()), seconds)


def test_rollout_reads_from_indexes_and_never_lists(rollout: Rollout) -> None:
    during = rollout.during
    reads = [r for r in during if r.verb in ("list", "get") and not events_relist(r)]
    assert reads == [], f"reads during the rollout: {by_verb_and_resource(reads)}"
    assert sum(1 for r in during if events_relist(r)) <= 1, by_verb_and_resource(during)
    # The watches opened at start-up carry on; none is restarted by the rollout.
    reopened = [r for r in during if r.verb == "watch" and r.resource != "events"]
    assert reopened == [], by_verb_and_resource(during)


def test_rollout_writes_are_bounded_by_sites_and_nodes(rollout: Rollout) -> None:
    """What the controller must do: one DaemonSet apply per site, one pod delete per node;
    status patches never one per pod transition (a node's pod goes through about three):
    one as each wave starts and ends, and progress between them at most once per
    coalescing window (0.45 to 0.6 patches per node before a number read back as 0 for the
    0.0 written stopped counting as a change; about 0.1 now); an Event at each wave's start
    and success; nothing else (kopf writes nothing on the object: the operator has event
    handlers only)."""
    writes = [r for r in rollout.during if r.is_write]
    summary = by_verb_and_resource(writes)
    assert count(writes, "patch", "daemonsets") == SITES, summary
    assert count(writes, "delete", "pods") <= NODES, summary
    status_patches = count(writes, "patch", "edgedeployments/status")
    progress_windows = math.ceil(rollout.seconds / STATUS_COALESCE_SECONDS)
    assert status_patches <= 2 * WAVES + 2 + progress_windows, (rollout.seconds, summary)
    events = count(writes, "create", "events")
    assert events <= 2 * WAVES + 4, summary
    assert len(writes) <= SITES + NODES + status_patches + events, summary
    assert count(writes, "patch", "edgedeployments") == 0, summary


def overlapping(requests: list[ApiRequest], verb: str, resource: str) -> int:
    """How many of these requests the apiserver received before the previous one's answer
    was complete: none when the client sends them one after another."""
    chosen = sorted(
        (r for r in requests if r.verb == verb and r.resource == resource),
        key=lambda r: r.received,
    )
    return sum(1 for a, b in pairwise(chosen) if b.received < a.completed)


def test_a_waves_daemonset_applies_and_pod_replacements_go_out_together(
    rollout: Rollout,
) -> None:
    """A wave's child writes are sent several at a time, not each after the last one's
    answer: one by one, a wave of 40 sites waited 8 s for its deletes at every step."""
    writes = [r for r in rollout.during if r.is_write]
    summary = by_verb_and_resource(writes)
    assert overlapping(writes, "patch", "daemonsets") > 0, summary
    assert overlapping(writes, "delete", "pods") > 0, summary


def test_settled_rollout_stays_silent(rollout: Rollout) -> None:
    """No hot loop: once Available, heartbeats and the planner's requeues touch no child,
    and what trails the last transition is a handful of writes at most (kopf posts Events
    from a queue; a reconcile already under way may repeat the final status)."""
    writes = [r for r in rollout.after if r.is_write]
    summary = by_verb_and_resource(rollout.after)
    assert [r for r in writes if r.resource in ("pods", "daemonsets")] == [], summary
    assert count(writes, "patch", "edgedeployments/status") <= 1, summary
    assert len(writes) <= 3, summary
