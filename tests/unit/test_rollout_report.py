"""The report: each check of a site's state chain, the phase chain, the counts and the plan
that carries them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fogline.rollout import RolloutMemory, RolloutPolicy, SiteObservation
from fogline.rollout.report import (
    SITE_STATE_CHECKS,
    SiteView,
    awaiting_slot,
    awaiting_wave,
    counts,
    failed,
    held,
    in_wave,
    phase,
    report,
    settled,
    site_state,
    unreachable,
)
from fogline.rollout.state import PlanInputs, Progress
from tests.unit.rollout_fleet import A, B, available, fleet, inputs, mid_wave, node, site

pytestmark = pytest.mark.unit


def view(call: PlanInputs, name: str) -> SiteView:
    progress = Progress.recall(call)
    return SiteView(
        call,
        progress,
        call.sites[name],
        progress.templates.get(name),
        set(progress.wave_sites),
        set(progress.converging),
    )


def test_the_site_state_checks_run_in_order() -> None:
    assert [check.__name__ for check in SITE_STATE_CHECKS] == [
        "held",
        "unreachable",
        "failed",
        "unplaced",
        "in_wave",
        "converging",
        "awaiting_wave",
        "awaiting_slot",
    ]


def test_a_held_site_is_paused_before_anything_else_is_asked() -> None:
    sites = [replace(site("s1", A, ready=False), maintenance=True)]
    call = inputs(sites, available(A, sites))
    assert held(view(call, "s1")) == (
        "Paused",
        "in maintenance (a node has fogline.io/maintenance=true)",
    )
    assert site_state(view(call, "s1"))[0] == "Paused"


@pytest.mark.parametrize(
    ("disconnected", "note"),
    [("Wait", "the wave waits for it"), ("Skip", "it converges when it returns")],
)
def test_an_unreachable_wave_site_says_whether_the_wave_waits(disconnected: str, note: str) -> None:
    sites = [site("s1", A, ready=False)]
    policy = RolloutPolicy(disconnected=disconnected)  # type: ignore[arg-type]
    answer = unreachable(view(inputs(sites, mid_wave(sites, ("s1",)), policy), "s1"))
    assert answer == ("Unreachable", f"every node NotReady; {note}")


def test_a_failing_pod_on_any_digest_fails_the_row() -> None:
    sites = [SiteObservation("s1", (node("s1-0", A, failure="ImagePullBackOff"),))]
    call = inputs(sites, available(A, sites))
    assert failed(view(call, "s1")) == ("Failed", "node s1-0: pod ImagePullBackOff")


def test_a_wave_site_is_ready_once_it_serves_the_target() -> None:
    sites = [site("s1", B), site("s2", A)]
    call = inputs(sites, mid_wave(sites, ("s1", "s2")))
    assert in_wave(view(call, "s1")) == ("Ready", "wave 0 (canary) done")
    assert in_wave(view(call, "s2")) == ("Updating", "wave 0 (canary)")


def test_a_site_no_wave_took_yet_waits_for_one() -> None:
    sites = [site("s1", A), site("s2", A, ready=False)]
    memory = replace(mid_wave(sites, ()), skipped_sites=("s2",))
    call = inputs(sites, memory)
    assert awaiting_wave(view(call, "s1")) == ("Pending", "waits for a wave to bbbbbbbbbbbb")
    assert awaiting_wave(view(call, "s2"))[0] == "Skipped"


def test_a_site_behind_the_settled_digest_waits_for_a_slot() -> None:
    sites = [site("s1", A)]
    call = inputs(sites, replace(available(B, sites), site_digests={"s1": B}))
    assert awaiting_slot(view(call, "s1")) == ("Pending", "waits for a free slot (maxUnavailable)")


def test_the_last_check_tells_coming_up_from_rolled_back_from_ready() -> None:
    coming_up = [SiteObservation("s1", (node("s1-0", A, pod_ready=False),))]
    assert settled(view(inputs(coming_up, available(A, coming_up), target=A), "s1")) == (
        "Updating",
        "pods coming up",
    )
    back = fleet(["s1"], A)
    memory = replace(
        available(A, back), target_digest=B, stage="RolledBack", rolled_back_sites=("s1",)
    )
    assert settled(view(inputs(back, memory), "s1")) == (
        "RolledBack",
        "back on aaaaaaaaaaaa",
    )
    assert settled(view(inputs(back, available(A, back), target=A), "s1")) == ("Ready", "")


@pytest.mark.parametrize(
    ("memory", "policy", "sites", "expected"),
    [
        (
            RolloutMemory(stage="Failed", failure_message="site s1: boom"),
            RolloutPolicy(),
            1,
            ("Failed", "site s1: boom"),
        ),
        (
            RolloutMemory(stage="RolledBack", failure_message="site s1: boom"),
            RolloutPolicy(),
            1,
            ("RolledBack", "rolled back: site s1: boom"),
        ),
        (
            RolloutMemory(target_digest=B),
            RolloutPolicy(paused=True),
            1,
            ("Paused", "spec.rollout.paused is set"),
        ),
        (
            RolloutMemory(target_digest=B),
            RolloutPolicy(),
            0,
            ("Pending", "no edge node matches the placement"),
        ),
        (
            RolloutMemory(target_digest=B, wave_sites=("s0",)),
            RolloutPolicy(),
            1,
            ("Progressing", "wave 0 (first deploy): s0"),
        ),
        (
            RolloutMemory(target_digest=B),
            RolloutPolicy(),
            1,
            ("Progressing", "waiting for a site that is reachable and not held"),
        ),
    ],
)
def test_the_stage_decides_the_phase_before_the_fleet_is_looked_at(
    memory: RolloutMemory, policy: RolloutPolicy, sites: int, expected: tuple[str, str]
) -> None:
    call = inputs(fleet([f"s{i}" for i in range(sites)], B), memory, policy)
    assert phase(call, Progress.recall(call)) == expected


def test_a_completed_rollout_is_degraded_by_what_keeps_sites_from_serving() -> None:
    sites = [
        site("s1", B, ready=False),
        SiteObservation("s2", (node("s2-0", B, failure="Error"), node("s2-1", B, ready=False))),
        SiteObservation("s3", (node("s3-0", B, pod_ready=False),)),
        replace(site("s4", A, ready=False), paused=True),
    ]
    call = inputs(sites, available(B, sites))
    assert phase(call, Progress.recall(call)) == (
        "Degraded",
        "unreachable sites: s1; 1 node(s) NotReady; 1 pod(s) failing; 1 pod(s) not Ready",
    )
    healthy = fleet(["s1"], B)
    call = inputs(healthy, available(B, healthy))
    assert phase(call, Progress.recall(call)) == (
        "Available",
        "bbbbbbbbbbbb on every reachable site",
    )


def test_counts_tell_updated_from_ready() -> None:
    sites = [
        site("s1", B),
        SiteObservation("s2", (node("s2-0", B, pod_ready=False), node("s2-1", A))),
    ]
    call = inputs(sites, mid_wave(sites, ("s1", "s2")))
    got = counts(call, Progress.recall(call)).to_dict()
    assert got == {
        "sites": 2,
        "sitesUpdated": 1,
        "sitesReady": 1,
        "nodes": 4,
        "nodesUpdated": 3,
        "nodesReady": 3,
    }


def test_the_plan_carries_replacements_in_site_order_and_the_earliest_requeue() -> None:
    sites = fleet(["s1", "s2"], A)
    call = inputs(sites, available(A, sites), target=A)
    progress = Progress.recall(call).with_replacements({"s2": ("s2-0",), "s1": ("s1-1", "s1-0")})
    progress = progress.requeue_in(30.0).requeue_in(5.0)
    plan = report(call, progress)
    assert plan.replace_pods_on == ("s1-1", "s1-0", "s2-0")
    assert plan.requeue_after == 5.0
    assert plan.phase == plan.memory.phase == "Available"
    assert plan.site_digests == {"s1": A, "s2": A}
    assert [row.state for row in plan.sites] == ["Ready", "Ready"]
