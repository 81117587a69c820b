"""The planner's rules one at a time: starting a rollout, the pause, starting waves,
completion, convergence and templates for unplaced sites, and the order they run in."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fogline.rollout import RolloutMemory, RolloutPolicy, SiteObservation
from fogline.rollout.rules import (
    RULES,
    advance_rollout,
    converge,
    converge_fleet,
    start_next_wave,
    start_rollout,
    template_unplaced_sites,
    track_pause,
    wave_size,
)
from fogline.rollout.state import Progress
from tests.unit.rollout_fleet import A, B, at, available, fleet, inputs, mid_wave, node, site

pytestmark = pytest.mark.unit


def test_the_rules_run_in_the_documented_order() -> None:
    assert [rule.__name__ for rule in RULES] == [
        "start_rollout",
        "track_pause",
        "advance_rollout",
        "converge_fleet",
        "template_unplaced_sites",
    ]


def test_a_new_target_starts_from_wave_0_and_carries_sites_caught_mid_update() -> None:
    sites = [SiteObservation("s1", (node("s1-0", B, pod_ready=False),)), site("s2", B)]
    memory = replace(
        mid_wave(sites, ("s1", "s2")), completed_sites=("s3",), failed_site="s9", wave_index=2
    )
    call = inputs(sites, memory, target="sha256:" + "c" * 64)
    progress = start_rollout(call, Progress.recall(call))
    assert progress.stage == "Rollout"
    assert progress.wave_index == 0
    assert progress.wave_sites == ()
    assert progress.converging == ("s1",)
    assert progress.completed == frozenset()
    assert progress.failed_site is None
    assert [e.reason for e in progress.events] == ["RolloutStarted"]


def test_the_same_target_starts_nothing() -> None:
    sites = fleet(["s1"], B)
    call = inputs(sites, mid_wave(sites, ("s1",)))
    assert start_rollout(call, Progress.recall(call)) == Progress.recall(call)


@pytest.mark.parametrize(("retry", "restarts"), [(1, True), (0, False)])
def test_raising_retry_after_a_failure_restarts_the_rollout(retry: int, restarts: bool) -> None:
    sites = fleet(["s1"], A)
    memory = replace(mid_wave(sites, ()), stage="Failed", failed_site="s1")
    call = inputs(sites, memory, RolloutPolicy(retry=retry))
    progress = start_rollout(call, Progress.recall(call))
    assert (progress.stage == "Rollout") is restarts
    assert progress.retry_observed == retry
    assert [e.reason for e in progress.events] == (["RolloutRetried"] if restarts else [])


def test_pausing_stops_the_wave_clock_and_says_so_once() -> None:
    sites = fleet(["s1"], B)
    call = inputs(sites, mid_wave(sites, ("s1",)), RolloutPolicy(paused=True), now=30)
    progress = track_pause(call, Progress.recall(call))
    assert progress.paused
    assert progress.clock_stopped_at == at(30)
    assert [e.reason for e in progress.events] == ["RolloutPaused"]
    again = inputs(sites, progress.remember(B, "Paused"), RolloutPolicy(paused=True), now=40)
    assert track_pause(again, Progress.recall(again)).events == ()


def test_clearing_the_pause_says_so() -> None:
    sites = fleet(["s1"], B)
    call = inputs(sites, replace(mid_wave(sites, ("s1",)), paused=True))
    progress = track_pause(call, Progress.recall(call))
    assert not progress.paused
    assert [e.reason for e in progress.events] == ["RolloutResumed"]


@pytest.mark.parametrize(
    ("stable", "wave_index", "policy", "size"),
    [
        (None, 0, RolloutPolicy(), 8),
        (A, 0, RolloutPolicy(canary_sites=2), 2),
        (A, 1, RolloutPolicy(max_unavailable="25%"), 2),
        (A, 0, RolloutPolicy(canary_sites=0, max_unavailable=3), 3),
    ],
)
def test_wave_size_takes_every_site_first_then_the_canary_then_w(
    stable: str | None, wave_index: int, policy: RolloutPolicy, size: int
) -> None:
    """The worked examples of ``wave_size``."""
    call = inputs(fleet([f"s{i}" for i in range(8)]), policy=policy)
    progress = replace(Progress.recall(call), stable=stable, wave_index=wave_index)
    assert wave_size(call, progress, pending=8) == size


def test_the_next_wave_takes_carried_sites_first_then_site_name_order() -> None:
    sites = fleet(["s1", "s2", "s3", "s4"], A)
    memory = replace(mid_wave(sites, (), wave_index=1), converging_sites=("s3",))
    call = inputs(sites, memory, RolloutPolicy(max_unavailable=2), now=5)
    progress, started = start_next_wave(call, Progress.recall(call))
    assert started
    assert progress.wave_sites == ("s3", "s1")
    assert progress.converging == ()
    assert progress.wave_started_at == at(5)
    assert progress.templates["s3"] == progress.templates["s1"] == B
    assert progress.events[-1].message == "wave 1: updating s3, s1 to bbbbbbbbbbbb"


def test_sites_already_serving_the_target_need_no_wave() -> None:
    sites = [site("s1", B), site("s2", A)]
    call = inputs(sites, mid_wave(sites, ()))
    progress, started = start_next_wave(call, Progress.recall(call))
    assert started
    assert progress.completed == {"s1"}
    assert progress.wave_sites == ("s2",)


def test_the_next_wave_waits_for_the_pause_between_waves() -> None:
    sites = fleet(["s1", "s2"], A)
    memory = replace(mid_wave(sites, (), wave_index=1), next_wave_not_before=at(40))
    call = inputs(sites, memory, now=10)
    progress, started = start_next_wave(call, Progress.recall(call))
    assert not started
    assert progress.requeue == (30.0,)


def test_a_rollout_completes_only_once_a_site_served_the_target() -> None:
    unreachable = [site("s1", A, ready=False)]
    call = inputs(unreachable, mid_wave(unreachable, ()))
    progress, _ = start_next_wave(call, Progress.recall(call))
    assert progress.stage == "Rollout"
    assert progress.skipped == {"s1"}
    served = [site("s1", B), site("s2", A, ready=False)]
    call = inputs(served, mid_wave(served, ()))
    progress, _ = start_next_wave(call, Progress.recall(call))
    assert progress.stage == "Complete"
    assert progress.stable == B
    assert progress.events[-1].message == (
        "bbbbbbbbbbbb is the current digest on 1 site(s); "
        "1 unreachable site(s) follow when they return"
    )


def test_advance_rollout_runs_waves_until_one_is_unfinished() -> None:
    sites = [site("s1", B), site("s2", A), site("s3", A)]
    call = inputs(sites, mid_wave(sites, ("s1",)), RolloutPolicy(max_unavailable=1))
    progress = advance_rollout(call, Progress.recall(call))
    assert [e.reason for e in progress.events] == ["WaveSucceeded", "WaveStarted"]
    assert progress.wave_sites == ("s2",)


def test_advance_rollout_does_nothing_while_paused_or_after_completion() -> None:
    sites = fleet(["s1"], A)
    paused = inputs(sites, mid_wave(sites, ()), RolloutPolicy(paused=True))
    assert advance_rollout(paused, Progress.recall(paused)) == Progress.recall(paused)
    done = inputs(sites, available(B, sites))
    assert advance_rollout(done, Progress.recall(done)) == Progress.recall(done)


def test_convergence_admits_at_most_w_sites_and_a_slot_frees_when_one_serves() -> None:
    """The worked example of ``converge``: W=2, s1 converging, s2..s4 behind."""
    behind = fleet(["s2", "s3", "s4"], A)
    sites = [SiteObservation("s1", (node("s1-0", B, pod_ready=False),)), *behind]
    memory = replace(available(B, sites), converging_sites=("s1",))
    call = inputs(sites, memory, RolloutPolicy(max_unavailable=2))
    progress = converge(call, Progress.recall(call), B)
    assert progress.converging == ("s1", "s2")
    assert dict(progress.templates) == dict.fromkeys(["s1", "s2", "s3", "s4"], B)
    assert set(progress.replacements) == {"s2"}
    sites = [site("s1", B), *behind]
    call = inputs(sites, progress.remember(B, "Progressing"), RolloutPolicy(max_unavailable=2))
    assert converge(call, Progress.recall(call), B).converging == ("s2", "s3")


def test_the_fleet_converges_to_the_target_or_back_to_the_stable_digest() -> None:
    sites = fleet(["s1"], "sha256:" + "c" * 64)
    complete = inputs(sites, available(B, sites))
    assert converge_fleet(complete, Progress.recall(complete)).templates["s1"] == B
    rolled_back = replace(available(A, sites), target_digest=B, stage="RolledBack")
    call = inputs(sites, rolled_back)
    assert converge_fleet(call, Progress.recall(call)).templates["s1"] == A
    paused = inputs(sites, available(B, sites), RolloutPolicy(paused=True))
    assert converge_fleet(paused, Progress.recall(paused)) == Progress.recall(paused)


@pytest.mark.parametrize(
    ("memory", "digest"),
    [
        (RolloutMemory(target_digest=B), B),
        (replace(RolloutMemory(), target_digest=B, stable_digest=A, stage="Complete"), A),
        (RolloutMemory(target_digest=B, stage="Failed"), None),
    ],
)
def test_an_unplaced_site_gets_the_digest_the_fleet_runs(
    memory: RolloutMemory, digest: str | None
) -> None:
    sites = [site("s1", None), replace(site("s2", None), paused=True)]
    call = inputs(sites, memory)
    templates = template_unplaced_sites(call, Progress.recall(call)).templates
    assert dict(templates) == ({} if digest is None else {"s1": digest})
