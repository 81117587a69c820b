"""The wave-evaluation policy: how a wave reads, and when it succeeds, fails (rolling back
or holding) or goes on under its progress deadline."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fogline.rollout import RolloutMemory, RolloutPolicy, SiteObservation
from fogline.rollout.state import PlanInputs, Progress
from fogline.rollout.wave import WaveReading, evaluate_wave, read_wave
from tests.unit.rollout_fleet import A, B, at, fleet, inputs, mid_wave, node, site

pytestmark = pytest.mark.unit


def wave_call(
    sites: list[SiteObservation],
    wave: tuple[str, ...],
    *,
    now: float = 0.0,
    policy: RolloutPolicy | None = None,
    memory: RolloutMemory | None = None,
) -> tuple[PlanInputs, Progress]:
    call = inputs(sites, memory or mid_wave(sites, wave), policy, now=now)
    return call, Progress.recall(call)


def test_read_wave_lists_the_sites_still_coming_up() -> None:
    """The worked example: s1 serves the target, s2 is still coming up."""
    sites = [site("s1", B), SiteObservation("s2", (node("s2-0", B, pod_ready=False),))]
    assert read_wave(*wave_call(sites, ("s1", "s2"))) == WaveReading(unfinished=("s2",))


def test_read_wave_stops_at_the_first_failure() -> None:
    """The worked example: s1 unreachable under Skip, then a crash loop at s2."""
    sites = [
        site("s1", A, ready=False),
        SiteObservation("s2", (node("s2-0", B, failure="CrashLoopBackOff"),)),
        site("s3", A),
    ]
    reading = read_wave(*wave_call(sites, ("s1", "s2", "s3")))
    assert reading.passed_over == ("s1",)
    assert reading.unfinished == ()
    assert reading.failure == ("s2", "node s2-0: pod CrashLoopBackOff on bbbbbbbbbbbb")
    assert not reading.done


def test_read_wave_waits_for_an_unreachable_site_under_wait() -> None:
    sites = [site("s1", A, ready=False), site("s2", B)]
    call = wave_call(sites, ("s1", "s2"), policy=RolloutPolicy(disconnected="Wait"))
    assert read_wave(*call) == WaveReading(waiting=("s1",))


def test_held_and_fully_locked_sites_have_nothing_to_read() -> None:
    locked = SiteObservation("s2", (node("s2-0", A, locked=True),))
    sites = [replace(site("s1", A), paused=True), locked]
    reading = read_wave(*wave_call(sites, ("s1", "s2")))
    assert reading == WaveReading()
    assert reading.done


def test_a_done_wave_completes_its_sites_and_paces_the_next() -> None:
    sites = fleet(["s1", "s2", "s3"], B)
    progress, succeeded = evaluate_wave(
        *wave_call(sites, ("s1",), now=20, policy=RolloutPolicy(pause_seconds=30))
    )
    assert succeeded
    assert progress.completed == {"s1"}
    assert progress.wave_sites == ()
    assert progress.wave_index == 1
    assert progress.next_wave_not_before == at(50)
    assert [e.reason for e in progress.events] == ["WaveSucceeded"]


def test_a_failed_wave_rolls_back_to_the_stable_digest() -> None:
    sites = [SiteObservation("s1", (node("s1-0", B, failure="Error"),)), site("s2", A)]
    progress, succeeded = evaluate_wave(*wave_call(sites, ("s1",)))
    assert not succeeded
    assert progress.stage == "RolledBack"
    assert progress.rolled_back == {"s1"}
    assert progress.converging == ("s1",)
    assert progress.failed_site == "s1"
    assert [e.reason for e in progress.events] == ["WaveFailed", "RolledBack"]


@pytest.mark.parametrize(
    ("stable", "policy", "why"),
    [
        (None, RolloutPolicy(), "there is no earlier digest to return to"),
        (A, RolloutPolicy(auto_rollback=False), "spec.rollout.autoRollback is off"),
    ],
)
def test_a_failed_wave_holds_without_a_digest_to_return_to(
    stable: str | None, policy: RolloutPolicy, why: str
) -> None:
    sites = [SiteObservation("s1", (node("s1-0", B, failure="Error"),))]
    memory = mid_wave(sites, ("s1",), stable=stable)
    progress, _ = evaluate_wave(*wave_call(sites, ("s1",), policy=policy, memory=memory))
    assert progress.stage == "Failed"
    assert progress.events[-1].reason == "RolloutFailed"
    assert why in progress.events[-1].message


def test_the_deadline_counts_the_time_the_clock_stood_still() -> None:
    """The worked example of ``evaluate_wave``: 600 s budget, 90 s stood still."""
    sites = [SiteObservation("s1", (node("s1-0", B, pod_ready=False),))]
    memory = replace(mid_wave(sites, ("s1",)), wave_stopped_seconds=90.0)
    policy = RolloutPolicy(progress_deadline_seconds=600)
    before, _ = evaluate_wave(*wave_call(sites, ("s1",), now=689, policy=policy, memory=memory))
    assert before.stage == "Rollout"
    assert before.requeue == (1.0,)
    after, _ = evaluate_wave(*wave_call(sites, ("s1",), now=690, policy=policy, memory=memory))
    assert after.stage == "RolledBack"
    assert after.failure_message == (
        "site s1: 1 of 1 nodes not Ready on bbbbbbbbbbbb within 600s (progressDeadlineSeconds)"
    )


def test_waiting_for_a_disconnected_site_stops_the_clock() -> None:
    sites = [site("s1", A, ready=False), SiteObservation("s2", (node("s2-0", B, pod_ready=False),))]
    policy = RolloutPolicy(disconnected="Wait", progress_deadline_seconds=60)
    progress, _ = evaluate_wave(*wave_call(sites, ("s1", "s2"), now=1000, policy=policy))
    assert progress.stage == "Rollout"
    assert progress.clock_stopped_at == at(1000)
    assert progress.requeue == ()


def test_an_unfinished_wave_replaces_the_next_pods_of_its_sites() -> None:
    sites = [SiteObservation("s1", (node("s1-0", A), node("s1-1", A)))]
    progress, succeeded = evaluate_wave(*wave_call(sites, ("s1",), now=10))
    assert not succeeded
    assert dict(progress.replacements) == {"s1": ("s1-0",)}
    assert progress.requeue == (590.0,)
