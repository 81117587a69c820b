"""Named cases for the rollout planner: canary, waves, pauses, deadlines, rollback, holds,
paused and maintenance sites, update locks, disconnected sites and convergence."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from fogline.rollout import (
    PodObservation,
    RolloutMemory,
    RolloutPlan,
    RolloutPolicy,
    SiteObservation,
    plan_rollout,
    wave_width,
)
from tests.unit.rollout_fleet import (
    A,
    B,
    C,
    apply_plan,
    at,
    available,
    digests,
    drive,
    fleet,
    node,
    reasons,
    site,
    tick,
    with_node,
    with_site,
)

pytestmark = pytest.mark.unit

NAMES = ["s1", "s2", "s3", "s4", "s5"]


def waves_of(plans: list[RolloutPlan]) -> list[tuple[str, ...]]:
    """The sites of each wave, in the order the waves started."""
    return [p.memory.wave_sites for p in plans if "WaveStarted" in [e.reason for e in p.events]]


def state(plan: RolloutPlan, name: str) -> str:
    return next(row.state for row in plan.sites if row.name == name)


def row_message(plan: RolloutPlan, name: str) -> str:
    return next(row.message for row in plan.sites if row.name == name)


# -- wave width -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_unavailable", "eligible", "width"),
    [
        pytest.param(3, 10, 3, id="count"),
        pytest.param(0, 10, 1, id="count-zero-is-one"),
        pytest.param("25%", 10, 2, id="percent-rounds-down"),
        pytest.param("25%", 3, 1, id="percent-at-least-one"),
        pytest.param("100%", 7, 7, id="percent-all"),
        pytest.param("50%", 0, 1, id="no-eligible-site"),
        pytest.param(" 30% ", 10, 3, id="percent-with-spaces"),
    ],
)
def test_wave_width(max_unavailable: int | str, eligible: int, width: int) -> None:
    assert wave_width(max_unavailable, eligible) == width


@pytest.mark.parametrize("bad", ["25", "x%", "%", "-5%"])
def test_wave_width_rejects_garbage_naming_the_field(bad: str) -> None:
    with pytest.raises(ValueError, match=r"spec\.rollout\.maxUnavailable"):
        wave_width(bad, 10)


# -- first deploy ---------------------------------------------------------------------


def test_first_deploy_gives_every_eligible_site_the_target_at_once() -> None:
    sites = [*fleet(["s1", "s2", "s3"], digest=None), site("s4", None, paused=True)]
    plan = plan_rollout(sites, RolloutPolicy(), RolloutMemory(), A, at(0))
    assert plan.site_digests == {"s1": A, "s2": A, "s3": A}
    assert plan.replace_pods_on == ()
    assert plan.phase == "Progressing"
    assert plan.memory.wave_sites == ("s1", "s2", "s3")
    assert [e.reason for e in plan.events] == ["RolloutStarted", "WaveStarted"]
    assert state(plan, "s4") == "Paused"


def test_first_deploy_becomes_available_and_stable_once_pods_are_ready() -> None:
    sites = fleet(["s1", "s2"], digest=None)
    sites, plans = drive(sites, RolloutPolicy(), RolloutMemory(), A, steps=4)
    assert plans[-1].phase == "Available"
    assert plans[-1].memory.stable_digest == A
    assert reasons(plans).count("RolloutComplete") == 1
    assert plans[-1].counts.nodes_ready == 4 and plans[-1].counts.sites_ready == 2
    assert set(digests(sites).values()) == {A}


def test_first_deploy_that_crash_loops_fails_with_nothing_to_roll_back_to() -> None:
    sites = fleet(["s1", "s2"], digest=None)
    _, plans = drive(sites, RolloutPolicy(), RolloutMemory(), A, steps=3, fate=lambda _: "Error")
    last = plans[-1]
    assert last.phase == "Failed"
    assert last.memory.failed_site == "s1"
    assert "Error" in (last.memory.failure_message or "")
    assert "RolloutFailed" in reasons(plans)


def test_no_sites_is_pending() -> None:
    plan = plan_rollout([], RolloutPolicy(), RolloutMemory(), A, at(0))
    assert plan.phase == "Pending"
    assert plan.site_digests == {}


def test_no_sites_completes_nothing_and_makes_nothing_stable() -> None:
    memory = RolloutMemory()
    for step in range(3):
        plan = plan_rollout([], RolloutPolicy(), memory, A, at(step))
        memory = plan.memory
        assert "RolloutComplete" not in [e.reason for e in plan.events]
    assert memory.stable_digest is None


def test_pods_running_but_not_ready_after_completion_are_degraded() -> None:
    sites = fleet(["s1", "s2"])
    sites = with_node(sites, "s1-0", pod=PodObservation(A, ready=False))
    plan = plan_rollout(sites, RolloutPolicy(), available(A, sites), A, at(0))
    assert plan.phase == "Degraded"
    assert "1 pod(s) not Ready" in (plan.message or "")


def test_paused_at_creation_renders_nothing() -> None:
    sites = fleet(["s1"], digest=None)
    plan = plan_rollout(sites, RolloutPolicy(paused=True), RolloutMemory(), A, at(0))
    assert plan.site_digests == {}
    assert plan.phase == "Paused"


# -- canary and waves ---------------------------------------------------------------------


def test_new_target_updates_the_canary_site_first_one_node_at_a_time() -> None:
    sites = fleet(NAMES)
    plan = plan_rollout(sites, RolloutPolicy(), available(A, sites), B, at(0))
    assert plan.site_digests == {"s1": B, "s2": A, "s3": A, "s4": A, "s5": A}
    assert plan.replace_pods_on == ("s1-0",)
    assert plan.phase == "Progressing"
    assert plan.memory.wave_sites == ("s1",)
    assert [e.reason for e in plan.events] == ["RolloutStarted", "WaveStarted"]
    assert "canary" in plan.events[1].message
    assert state(plan, "s1") == "Updating" and state(plan, "s2") == "Pending"


@dataclass(frozen=True)
class WaveCase:
    sites: int
    canary: int
    max_unavailable: int | str
    waves: list[tuple[str, ...]]


WAVE_CASES = {
    "canary-then-count-2": WaveCase(5, 1, 2, [("s1",), ("s2", "s3"), ("s4", "s5")]),
    "two-canaries-then-count-3": WaveCase(5, 2, 3, [("s1", "s2"), ("s3", "s4", "s5")]),
    "no-canary": WaveCase(5, 0, 2, [("s1", "s2"), ("s3", "s4"), ("s5",)]),
    "percent-40-of-5-is-2": WaveCase(5, 1, "40%", [("s1",), ("s2", "s3"), ("s4", "s5")]),
    "percent-10-of-5-is-1": WaveCase(5, 1, "10%", [("s1",), ("s2",), ("s3",), ("s4",), ("s5",)]),
    "percent-100-all-after-canary": WaveCase(5, 1, "100%", [("s1",), ("s2", "s3", "s4", "s5")]),
    "canary-larger-than-fleet": WaveCase(2, 3, 3, [("s1", "s2")]),
}


@pytest.mark.parametrize("case", WAVE_CASES.values(), ids=WAVE_CASES.keys())
def test_waves_follow_canary_then_width_in_name_order(case: WaveCase) -> None:
    sites = fleet(NAMES[: case.sites])
    policy = RolloutPolicy(canary_sites=case.canary, max_unavailable=case.max_unavailable)
    sites, plans = drive(sites, policy, available(A, sites), B, steps=40)
    assert waves_of(plans) == case.waves
    assert plans[-1].phase == "Available"
    assert set(digests(sites).values()) == {B}


def test_percentage_counts_only_sites_not_paused_or_in_maintenance() -> None:
    sites = [
        *fleet(["s1", "s2", "s3", "s4"]),
        site("s5", paused=True),
        site("s6", maintenance=True),
    ]
    policy = RolloutPolicy(canary_sites=0, max_unavailable="50%")
    plan = plan_rollout(sites, policy, available(A, sites), B, at(0))
    assert plan.memory.wave_sites == ("s1", "s2")


def test_wave_never_starts_before_the_previous_one_is_ready() -> None:
    sites = fleet(NAMES)
    policy = RolloutPolicy(max_unavailable=2)
    _, plans = drive(sites, policy, available(A, sites), B, steps=30, fate=lambda _: "slow")
    assert waves_of(plans) == [("s1",)]
    assert all(p.memory.wave_sites == ("s1",) for p in plans[:-1])


def test_sites_already_on_the_target_need_no_wave() -> None:
    sites = [site("s1", B), site("s2"), site("s3", B)]
    plan = plan_rollout(sites, RolloutPolicy(), available(A, sites), B, at(0))
    assert plan.memory.wave_sites == ("s2",)
    assert plan.memory.completed_sites == ("s1", "s3")


def test_pause_between_waves_is_honoured_through_requeue_after() -> None:
    sites = fleet(["s1", "s2", "s3"])
    policy = RolloutPolicy(pause_seconds=300)
    memory = available(A, sites)
    plan = plan_rollout(sites, policy, memory, B, at(0))
    sites = tick(apply_plan(sites, plan))
    plan = plan_rollout(sites, policy, plan.memory, B, at(10))
    sites = tick(apply_plan(sites, plan))
    plan = plan_rollout(sites, policy, plan.memory, B, at(20))
    assert [e.reason for e in plan.events] == ["WaveSucceeded"]
    assert plan.memory.next_wave_not_before == at(320)
    assert plan.requeue_after == pytest.approx(300)
    early = plan_rollout(sites, policy, plan.memory, B, at(319))
    assert early.memory.wave_sites == () and early.requeue_after == pytest.approx(1)
    assert early.events == () and early.replace_pods_on == ()
    due = plan_rollout(sites, policy, plan.memory, B, at(320))
    assert due.memory.wave_sites == ("s2",)
    assert [e.reason for e in due.events] == ["WaveStarted"]


def test_wave_in_progress_asks_to_be_woken_at_its_deadline() -> None:
    sites = fleet(["s1", "s2"])
    policy = RolloutPolicy(progress_deadline_seconds=600)
    plan = plan_rollout(sites, policy, available(A, sites), B, at(0))
    later = plan_rollout(sites, policy, plan.memory, B, at(100))
    assert later.requeue_after == pytest.approx(500)


# -- failures -------------------------------------------------------------------------


def test_deadline_failure_rolls_back_every_updated_site() -> None:
    sites = fleet(["s1", "s2", "s3", "s4"])
    policy = RolloutPolicy(max_unavailable=2, progress_deadline_seconds=60)
    memory = available(A, sites)
    # Canary s1 comes up; the next wave (s2, s3) on B never becomes Ready.
    sites, plans = drive(sites, policy, memory, B, steps=3)
    assert plans[-1].memory.wave_sites == ("s2", "s3")
    sites, more = drive(
        sites, policy, plans[-1].memory, B, start=30, steps=20, fate=lambda _: "slow"
    )
    failed = next(p for p in more if "WaveFailed" in [e.reason for e in p.events])
    assert [e.reason for e in failed.events] == ["WaveFailed", "RolledBack"]
    assert failed.phase == "RolledBack"
    assert failed.memory.failed_site == "s2"
    assert "within 60s" in (failed.memory.failure_message or "")
    assert failed.site_digests == {"s1": A, "s2": A, "s3": A, "s4": A}
    # The failed wave's sites go first (W = 2): their unready pods at once plus one Ready
    # pod each; the healthy canary s1 waits for a slot.
    assert failed.replace_pods_on == ("s2-1", "s2-0", "s3-1", "s3-0")
    assert failed.memory.converging_sites == ("s2", "s3")
    # Pods on A come up fine: the whole fleet returns to A and stays RolledBack.
    sites, rest = drive(sites, policy, failed.memory, B, start=400, steps=20)
    assert set(digests(sites).values()) == {A}
    assert rest[-1].phase == "RolledBack"
    assert {state(rest[-1], n) for n in ["s1", "s2", "s3"]} == {"RolledBack"}
    assert state(rest[-1], "s4") == "Ready"


def test_crash_loop_in_the_canary_fails_the_wave_at_once_and_names_the_site() -> None:
    sites = fleet(["s1", "s2"])
    fate = {A: "ready", B: "CrashLoopBackOff"}.__getitem__
    _, plans = drive(sites, RolloutPolicy(), available(A, sites), B, steps=2, fate=fate)
    last = plans[-1]
    assert last.phase == "RolledBack"
    assert last.memory.failed_site == "s1"
    assert "CrashLoopBackOff" in (last.memory.failure_message or "")
    assert "s1-0" in last.replace_pods_on
    assert last.site_digests["s1"] == A


def test_rollback_respects_max_unavailable_for_healthy_completed_sites() -> None:
    sites = fleet(["s1", "s2", "s3", "s4", "s5"], nodes=1)
    policy = RolloutPolicy(max_unavailable=1)
    fate = {A: "ready", B: "ready"}.__getitem__
    sites, plans = drive(sites, policy, available(A, sites), B, steps=3, fate=fate)
    assert plans[-1].memory.completed_sites == ("s1", "s2")
    assert plans[-1].memory.wave_sites == ("s3",)
    sites = with_node(sites, "s3-0", pod=node("s3-0", B, failure="ProbeFailed").pod)
    plan = plan_rollout(sites, policy, plans[-1].memory, B, at(500))
    assert plan.phase == "RolledBack"
    assert plan.site_digests == dict.fromkeys(["s1", "s2", "s3", "s4", "s5"], A)
    # The failed site goes first and alone (W = 1); s1 and s2 follow one by one.
    assert plan.replace_pods_on == ("s3-0",)
    assert plan.memory.converging_sites == ("s3",)
    sites, plans = drive(sites, policy, plan.memory, B, start=500, steps=8, fate=fate)
    assert [p.replace_pods_on for p in plans if p.replace_pods_on] == [
        ("s3-0",),
        ("s1-0",),
        ("s2-0",),
    ]


def test_without_auto_rollback_a_failure_holds_the_fleet() -> None:
    sites = fleet(["s1", "s2", "s3"])
    policy = RolloutPolicy(auto_rollback=False)
    fate = {A: "ready", B: "ImagePullBackOff"}.__getitem__
    sites, plans = drive(sites, policy, available(A, sites), B, steps=2, fate=fate)
    failed = plans[-1]
    assert failed.phase == "Failed"
    assert [e.reason for e in failed.events] == ["WaveFailed", "RolloutFailed"]
    assert failed.site_digests == {"s1": B, "s2": A, "s3": A}
    assert state(failed, "s1") == "Failed"
    held = plan_rollout(sites, policy, failed.memory, B, at(10_000))
    assert held.phase == "Failed" and held.events == () and held.replace_pods_on == ()
    assert held.site_digests == failed.site_digests


def test_rolled_back_rollout_stays_so_until_the_target_changes() -> None:
    sites = fleet(["s1", "s2"])
    fate = {A: "ready", B: "Error", C: "ready"}.__getitem__
    sites, plans = drive(sites, RolloutPolicy(), available(A, sites), B, steps=6, fate=fate)
    assert plans[-1].phase == "RolledBack" and reasons(plans).count("WaveStarted") == 1
    sites, plans = drive(sites, RolloutPolicy(), plans[-1].memory, C, start=100, steps=8)
    assert reasons(plans)[0] == "RolloutStarted"
    assert plans[-1].phase == "Available" and plans[-1].memory.stable_digest == C
    assert set(digests(sites).values()) == {C}


def test_raising_retry_restarts_the_same_target_from_the_canary() -> None:
    sites = fleet(["s1", "s2"])
    broken = {A: "ready", B: "Error"}.__getitem__
    sites, plans = drive(sites, RolloutPolicy(), available(A, sites), B, steps=6, fate=broken)
    memory = plans[-1].memory
    assert memory.phase == "RolledBack"
    same = plan_rollout(sites, RolloutPolicy(), memory, B, at(100))
    assert same.phase == "RolledBack" and same.events == ()
    sites, plans = drive(sites, RolloutPolicy(retry=1), memory, B, start=200, steps=10)
    assert reasons(plans)[:2] == ["RolloutRetried", "WaveStarted"]
    assert waves_of(plans)[0] == ("s1",)
    assert plans[-1].phase == "Available"
    assert plans[-1].memory.retry_observed == 1


def test_retry_raised_while_healthy_is_only_recorded() -> None:
    sites = fleet(["s1"])
    plan = plan_rollout(sites, RolloutPolicy(retry=3), available(A, sites), A, at(0))
    assert plan.events == () and plan.memory.retry_observed == 3 and plan.phase == "Available"


def test_target_change_mid_rollout_starts_over_from_the_canary() -> None:
    sites = fleet(["s1", "s2", "s3"], nodes=1)
    sites, plans = drive(sites, RolloutPolicy(), available(A, sites), B, steps=2)
    assert plans[-1].memory.completed_sites == ("s1",)
    plan = plan_rollout(sites, RolloutPolicy(), plans[-1].memory, C, at(100))
    assert plan.memory.wave_sites == ("s1",)
    assert plan.memory.stable_digest == A
    assert [e.reason for e in plan.events][:1] == ["RolloutStarted"]


# -- pause ----------------------------------------------------------------------------


def test_paused_rollout_replaces_nothing_and_starts_no_wave() -> None:
    sites = fleet(["s1", "s2"])
    plan = plan_rollout(sites, RolloutPolicy(), available(A, sites), B, at(0))
    paused = plan_rollout(sites, RolloutPolicy(paused=True), plan.memory, B, at(5))
    assert paused.phase == "Paused"
    assert paused.replace_pods_on == ()
    assert [e.reason for e in paused.events] == ["RolloutPaused"]
    again = plan_rollout(sites, RolloutPolicy(paused=True), paused.memory, B, at(50))
    assert again.events == () and again.requeue_after is None


def test_progress_deadline_clock_stops_while_paused() -> None:
    sites = fleet(["s1", "s2"])
    policy = RolloutPolicy(progress_deadline_seconds=600)
    plan = plan_rollout(sites, policy, available(A, sites), B, at(0))
    paused = plan_rollout(sites, replace(policy, paused=True), plan.memory, B, at(100))
    resumed = plan_rollout(sites, policy, paused.memory, B, at(1100))
    assert [e.reason for e in resumed.events] == ["RolloutResumed"]
    assert resumed.phase == "Progressing"
    assert resumed.requeue_after == pytest.approx(500)
    still = plan_rollout(sites, policy, resumed.memory, B, at(1599))
    assert still.phase == "Progressing"
    late = plan_rollout(sites, policy, resumed.memory, B, at(1600))
    assert late.phase == "RolledBack"


def test_pause_does_not_hide_a_failure() -> None:
    memory = RolloutMemory(target_digest=B, stable_digest=A, stage="Failed", phase="Failed")
    plan = plan_rollout(fleet(["s1"]), RolloutPolicy(paused=True), memory, B, at(0))
    assert plan.phase == "Failed"


# -- paused sites, maintenance, locks ------------------------------------------------


@pytest.mark.parametrize(
    "held", [{"paused": True}, {"maintenance": True}], ids=["paused-site", "maintenance"]
)
def test_held_site_is_skipped_by_waves_and_converges_when_released(held: dict[str, bool]) -> None:
    sites = fleet(["s1", "s2", "s3"])
    sites = with_site(sites, "s1", **held)
    policy = RolloutPolicy()
    sites, plans = drive(sites, policy, available(A, sites), B, steps=12)
    assert waves_of(plans) == [("s2",), ("s3",)]
    assert plans[-1].phase == "Available"
    assert state(plans[-1], "s1") == "Paused"
    assert plans[-1].site_digests["s1"] == A
    assert all(not n.startswith("s1-") for p in plans for n in p.replace_pods_on)
    released = with_site(sites, "s1", paused=False, maintenance=False)
    released, plans = drive(released, policy, plans[-1].memory, B, start=500, steps=6)
    assert set(digests(released).values()) == {B}
    assert plans[-1].phase == "Available"
    assert "WaveStarted" not in reasons(plans)


def test_locked_node_is_deferred_without_blocking_then_converges_when_unlocked() -> None:
    sites = fleet(["s1", "s2"])
    sites = with_node(sites, "s1-1", locked=True)
    policy = RolloutPolicy()
    sites, plans = drive(sites, policy, available(A, sites), B, steps=10)
    assert plans[-1].phase == "Available"
    assert digests(sites)["s1-1"] == A
    assert "s1-1" not in {n for p in plans for n in p.replace_pods_on}
    assert "fogline.io/update-lock" in row_message(plans[-1], "s1")
    unlocked = with_node(sites, "s1-1", locked=False)
    plan = plan_rollout(unlocked, policy, plans[-1].memory, B, at(1000))
    assert plan.replace_pods_on == ("s1-1",)
    assert plan.events == ()
    unlocked, plans = drive(unlocked, policy, plans[-1].memory, B, start=1000, steps=3)
    assert set(digests(unlocked).values()) == {B}


def test_pods_that_are_not_ready_are_replaced_at_once_ready_ones_one_by_one() -> None:
    s1 = SiteObservation(
        "s1",
        (node("s1-0"), node("s1-1", pod_ready=False), node("s1-2"), node("s1-3", pod_ready=False)),
    )
    plan = plan_rollout([s1], RolloutPolicy(), available(A, [s1]), B, at(0))
    assert plan.replace_pods_on == ("s1-1", "s1-3", "s1-0")


def test_next_node_of_a_site_waits_for_the_previous_one_to_be_ready() -> None:
    s1 = SiteObservation("s1", (node("s1-0", B, pod_ready=False), node("s1-1"), node("s1-2")))
    memory = replace(available(A, [s1]), target_digest=B)
    memory = replace(memory, stage="Rollout", wave_sites=("s1",), wave_started_at=at(0))
    plan = plan_rollout([s1], RolloutPolicy(), memory, B, at(5))
    assert plan.replace_pods_on == ()
    ready = with_node([s1], "s1-0", pod=node("s1-0", B).pod)
    plan = plan_rollout(ready, RolloutPolicy(), memory, B, at(6))
    assert plan.replace_pods_on == ("s1-1",)


# -- disconnected sites ---------------------------------------------------------------


def test_skip_policy_goes_around_an_unreachable_site_and_converges_it_on_return() -> None:
    sites = [*fleet(["s1", "s3"]), site("s2", ready=False)]
    policy = RolloutPolicy(disconnected="Skip")
    sites, plans = drive(sites, policy, available(A, sites), B, steps=10)
    assert waves_of(plans) == [("s1",), ("s3",)]
    assert reasons(plans).count("SiteSkipped") == 1
    assert plans[-1].phase == "Degraded"
    assert plans[-1].memory.stable_digest == B
    assert state(plans[-1], "s2") == "Unreachable"
    assert all(not n.startswith("s2-") for p in plans for n in p.replace_pods_on)
    back = [replace(s, nodes=tuple(replace(n, ready=True) for n in s.nodes)) for s in sites]
    back, plans = drive(back, policy, plans[-1].memory, B, start=500, steps=6)
    assert set(digests(back).values()) == {B}
    assert plans[-1].phase == "Available"


def test_wait_policy_holds_the_next_wave_and_its_deadline_until_the_site_returns() -> None:
    sites = [site("s1"), site("s2", ready=False), site("s3")]
    policy = RolloutPolicy(disconnected="Wait", max_unavailable=2, progress_deadline_seconds=60)
    sites, plans = drive(sites, policy, available(A, sites), B, steps=40, step=30)
    last = plans[-1]
    assert waves_of(plans) == [("s1",), ("s2", "s3")]
    assert last.phase == "Progressing" and last.memory.wave_sites == ("s2", "s3")
    assert last.requeue_after is None
    assert "waits" in row_message(last, "s2")
    back = [replace(s, nodes=tuple(replace(n, ready=True) for n in s.nodes)) for s in sites]
    back, plans = drive(back, policy, last.memory, B, start=5000, steps=6)
    assert "WaveFailed" not in reasons(plans)
    assert plans[-1].phase == "Available"
    assert set(digests(back).values()) == {B}


def test_partly_not_ready_site_updates_its_ready_nodes_and_never_the_others() -> None:
    sites = fleet(["s1"], nodes=3)
    sites = with_node(sites, "s1-1", ready=False)
    sites, plans = drive(sites, RolloutPolicy(), available(A, sites), B, steps=8)
    assert plans[-1].memory.stable_digest == B
    assert digests(sites) == {"s1-0": B, "s1-1": A, "s1-2": B}
    assert plans[-1].phase == "Degraded"
    assert "NotReady" in row_message(plans[-1], "s1")


# -- convergence after completion ------------------------------------------------------


def test_new_site_gets_the_current_digest_without_a_new_rollout() -> None:
    sites = fleet(["s1", "s2"], digest=B)
    memory = available(B, sites)
    grown = [*sites, site("s9", digest=None)]
    plan = plan_rollout(grown, RolloutPolicy(), memory, B, at(0))
    assert plan.site_digests["s9"] == B
    assert plan.events == ()
    grown, plans = drive(grown, RolloutPolicy(), memory, B, steps=3)
    assert plans[-1].phase == "Available"
    assert set(digests(grown).values()) == {B}


def test_new_node_in_a_site_gets_its_site_digest() -> None:
    sites = fleet(["s1"], digest=B)
    grown = [replace(sites[0], nodes=(*sites[0].nodes, node("s1-9", None)))]
    grown, plans = drive(grown, RolloutPolicy(), available(B, sites), B, steps=3)
    assert digests(grown)["s1-9"] == B
    assert reasons(plans) == []


def test_returning_sites_converge_at_most_w_at_a_time() -> None:
    sites = [*fleet(["s1"], digest=B), *fleet(["s2", "s3", "s4"], digest=A)]
    memory = replace(available(B, sites), site_digests={"s1": B, "s2": A, "s3": A, "s4": A})
    plan = plan_rollout(sites, RolloutPolicy(max_unavailable=2), memory, B, at(0))
    assert plan.memory.converging_sites == ("s2", "s3")
    assert plan.replace_pods_on == ("s2-0", "s3-0")
    assert plan.site_digests == {"s1": B, "s2": B, "s3": B, "s4": B}
    assert state(plan, "s4") == "Pending"


def test_removed_site_disappears_from_plan_and_memory() -> None:
    sites = fleet(["s1", "s2"], digest=B)
    memory = replace(available(B, sites), converging_sites=("s2",))
    plan = plan_rollout(sites[:1], RolloutPolicy(), memory, B, at(0))
    assert plan.site_digests == {"s1": B}
    assert [row.name for row in plan.sites] == ["s1"]
    assert plan.memory.converging_sites == ()


def test_failing_pod_after_completion_is_degraded_not_a_rollback() -> None:
    sites = fleet(["s1", "s2"], digest=B)
    sites = with_node(sites, "s2-1", pod=node("s2-1", B, failure="CrashLoopBackOff").pod)
    plan = plan_rollout(sites, RolloutPolicy(), available(B, sites), B, at(0))
    assert plan.phase == "Degraded"
    assert state(plan, "s2") == "Failed"
    assert plan.events == ()


# -- idempotence, events, memory --------------------------------------------------------

SCENARIOS: dict[str, tuple[list[SiteObservation], RolloutPolicy, RolloutMemory, str]] = {
    "first-deploy": (fleet(["s1", "s2"], digest=None), RolloutPolicy(), RolloutMemory(), A),
    "canary": (fleet(NAMES), RolloutPolicy(), available(A, fleet(NAMES)), B),
    "paused": (fleet(NAMES), RolloutPolicy(paused=True), available(A, fleet(NAMES)), B),
    "unreachable-skip": (
        [site("s1"), site("s2", ready=False)],
        RolloutPolicy(),
        available(A, fleet(["s1", "s2"])),
        B,
    ),
}


@pytest.mark.parametrize("case", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_replanning_the_same_observation_is_a_fixed_point(
    case: tuple[list[SiteObservation], RolloutPolicy, RolloutMemory, str],
) -> None:
    sites, policy, memory, target = case
    first = plan_rollout(sites, policy, memory, target, at(0))
    assert first == plan_rollout(sites, policy, memory, target, at(0))
    second = plan_rollout(sites, policy, first.memory, target, at(0))
    assert second.events == ()
    assert second.replace_pods_on == first.replace_pods_on
    assert second.site_digests == first.site_digests
    assert second.memory == first.memory


def test_each_transition_emits_its_event_once() -> None:
    sites = fleet(["s1", "s2", "s3"])
    _, plans = drive(sites, RolloutPolicy(), available(A, sites), B, steps=12)
    assert reasons(plans) == [
        "RolloutStarted",
        "WaveStarted",
        "WaveSucceeded",
        "WaveStarted",
        "WaveSucceeded",
        "WaveStarted",
        "WaveSucceeded",
        "RolloutComplete",
    ]
    warnings = [e for p in plans for e in p.events if e.type == "Warning"]
    assert warnings == []


def test_memory_round_trips_through_camel_case_status() -> None:
    sites = fleet(["s1", "s2"])
    plan = plan_rollout(sites, RolloutPolicy(pause_seconds=60), available(A, sites), B, at(0))
    data = plan.memory.to_dict()
    assert {"targetDigest", "stableDigest", "waveStartedAt", "siteDigests"} <= data.keys()
    assert data["waveStartedAt"] == "2026-03-01T12:00:00Z"
    assert RolloutMemory.from_dict(data) == plan.memory
    assert RolloutMemory.from_dict(None) == RolloutMemory()
    assert RolloutMemory.from_dict({}) == RolloutMemory()


def test_memory_rejects_an_unknown_phase() -> None:
    with pytest.raises(ValueError, match="phase"):
        RolloutMemory.from_dict({"phase": "Exploded"})


def test_counts_and_rows_describe_the_fleet() -> None:
    sites = [site("s1", B), site("s2", A), site("s3", ready=False)]
    memory = replace(available(A, sites), site_digests={"s1": B, "s2": A, "s3": A})
    plan = plan_rollout(sites, RolloutPolicy(paused=True), memory, A, at(0))
    assert plan.counts.to_dict() == {
        "sites": 3,
        "sitesUpdated": 2,
        "sitesReady": 2,
        "nodes": 6,
        "nodesUpdated": 4,
        "nodesReady": 4,
    }
    row = plan.sites[2].to_dict()
    assert row == {
        "name": "s3",
        "digest": A,
        "state": "Unreachable",
        "desired": 2,
        "updated": 2,
        "ready": 0,
        "reachable": False,
        "message": "every node NotReady; it converges when it returns",
    }


def test_target_no_site_could_run_never_becomes_stable() -> None:
    sites = [site("s1", ready=False), site("s2", ready=False)]
    plan = plan_rollout(sites, RolloutPolicy(), available(A, sites), B, at(0))
    assert plan.phase == "Progressing"
    assert plan.memory.stable_digest == A
    assert [e.reason for e in plan.events] == ["RolloutStarted", "SiteSkipped", "SiteSkipped"]
    back = [replace(s, nodes=tuple(replace(n, ready=True) for n in s.nodes)) for s in sites]
    back, plans = drive(back, RolloutPolicy(), plan.memory, B, start=100, steps=10)
    assert waves_of(plans)[0] == ("s1",)
    assert plans[-1].phase == "Available"


def test_site_with_every_node_locked_stays_out_of_waves_and_follows_later() -> None:
    sites = fleet(["s1", "s2"])
    sites = with_node(with_node(sites, "s1-0", locked=True), "s1-1", locked=True)
    sites, plans = drive(sites, RolloutPolicy(), available(A, sites), B, steps=6)
    assert waves_of(plans) == [("s2",)]
    assert plans[-1].memory.stable_digest == B
    unlocked = [replace(s, nodes=tuple(replace(n, locked=False) for n in s.nodes)) for s in sites]
    unlocked, plans = drive(unlocked, RolloutPolicy(), plans[-1].memory, B, start=100, steps=6)
    assert set(digests(unlocked).values()) == {B}


def test_converging_site_whose_pods_fail_keeps_its_slot() -> None:
    sites = [*fleet(["s1"], digest=B), *fleet(["s2", "s3"], digest=A, nodes=1)]
    memory = available(B, sites)
    crash = {B: "CrashLoopBackOff"}.__getitem__
    sites, plans = drive(sites, RolloutPolicy(max_unavailable=1), memory, B, steps=5, fate=crash)
    assert [p.replace_pods_on for p in plans if p.replace_pods_on] == [("s2-0",)]
    assert digests(sites)["s3-0"] == A
    assert plans[-1].phase == "Degraded"
    assert plans[-1].memory.converging_sites == ("s2",)


# -- workloads that cannot create their pods ------------------------------------------

REFUSED = 'DaemonSet shop-s1 FailedCreate: pods "x" is forbidden: violates PodSecurity "restricted"'


def test_a_refused_pod_fails_the_wave_at_once_with_the_refusal_not_at_the_deadline() -> None:
    sites = fleet(["s1", "s2"], digest=None)
    policy = RolloutPolicy(progress_deadline_seconds=600)
    started = plan_rollout(sites, policy, RolloutMemory(), A, at(0))
    assert started.memory.wave_sites == ("s1", "s2")
    refused = with_site(sites, "s1", refusal=REFUSED, refused_at=at(1))
    plan = plan_rollout(refused, policy, started.memory, A, at(3))
    assert plan.phase == "Failed"
    assert plan.message == f"site s1: {REFUSED}"
    assert (state(plan, "s1"), row_message(plan, "s1")) == ("Failed", plan.message)
    assert [e.reason for e in plan.events] == ["WaveFailed", "RolloutFailed"]


def test_a_refusal_from_before_the_wave_does_not_fail_it_but_shows_on_the_site() -> None:
    sites = fleet(["s1"], digest=None)
    started = plan_rollout(sites, RolloutPolicy(), RolloutMemory(), A, at(100))
    stale = with_site(sites, "s1", refusal=REFUSED, refused_at=at(10))
    plan = plan_rollout(stale, RolloutPolicy(), started.memory, A, at(101))
    assert plan.phase == "Progressing"
    assert (state(plan, "s1"), row_message(plan, "s1")) == ("Failed", REFUSED)


def test_a_refusal_counts_only_while_a_node_lacks_its_pod() -> None:
    sites = fleet(["s1", "s2"])
    memory = available(A, sites)
    served = with_site(sites, "s1", refusal=REFUSED, refused_at=at(1))
    plan = plan_rollout(served, RolloutPolicy(), memory, A, at(2))
    assert plan.phase == "Available" and state(plan, "s1") == "Ready"
    missing = with_node(served, "s1-0", pod=None)
    plan = plan_rollout(missing, RolloutPolicy(), memory, A, at(3))
    assert plan.phase == "Degraded" and f"site s1: {REFUSED}" in plan.message
    assert (state(plan, "s1"), row_message(plan, "s1")) == ("Failed", REFUSED)
