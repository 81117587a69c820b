"""Named cases for the rollout planner with spec.rollout.analysis: a wave whose pods are
Ready waits for the verdict on its metrics; a pass promotes it, a failure rolls it back at
the site that broke the threshold, and an inconclusive verdict waits (or fails) but never
promotes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from fogline.api.edgedeployment import AnalysisSpec
from fogline.rollout import RolloutPlan, RolloutPolicy, SiteObservation, plan_rollout
from fogline.rollout.analysis import (
    AnalysisFailure,
    AnalysisVerdict,
    MetricResult,
    VerdictPhase,
    WaveAnalysis,
)
from tests.unit.rollout_fleet import A, B, apply_plan, at, available, fleet, reasons, tick

pytestmark = pytest.mark.unit

NAMES = ["s1", "s2", "s3", "s4"]
GATED = RolloutPolicy(
    canary_sites=1,
    max_unavailable=2,
    progress_deadline_seconds=300,
    analysis=AnalysisSpec(window_seconds=30, max_error_ratio=0.05),
)


def verdict(phase: VerdictPhase, site: str = "s1", message: str = "") -> AnalysisVerdict:
    failure = AnalysisFailure(site, "errorRatio", 0.4, 0.05) if phase == "Failed" else None
    return AnalysisVerdict(
        phase=phase,
        started_at=at(0),
        requests=100,
        pods=1,
        results=(MetricResult("errorRatio", 0.05, 0.4 if failure else 0.01, site=site),),
        failure=failure,
        message=message or (failure.text() if failure else phase),
    )


Answer = Callable[[RolloutPlan], WaveAnalysis | None]


def answering(phase: VerdictPhase) -> Answer:
    """Answer whatever wave the last plan asked about with a verdict of ``phase``."""

    def answer(plan: RolloutPlan) -> WaveAnalysis | None:
        request = plan.analyze
        if request is None:
            return None
        return WaveAnalysis(request.wave, request.digest, verdict(phase, request.sites[0]))

    return answer


def run(
    policy: RolloutPolicy,
    answer: Answer,
    steps: int = 12,
    step: float = 10.0,
    sites: list[SiteObservation] | None = None,
) -> tuple[list[SiteObservation], list[RolloutPlan]]:
    """Reconcile like the controller: each plan gets the verdict on what the one before it
    asked for."""
    sites = sites or fleet(NAMES, A, nodes=1)
    memory = available(A, sites)
    plans: list[RolloutPlan] = []
    given: WaveAnalysis | None = None
    for i in range(steps):
        plan = plan_rollout(sites, policy, memory, B, at(i * step), given)
        plans.append(plan)
        memory = plan.memory
        sites = tick(apply_plan(sites, plan))
        given = answer(plan)
    return sites, plans


def test_a_ready_canary_waits_for_its_analysis_and_asks_for_it() -> None:
    _, plans = run(GATED, lambda _plan: None, steps=6)
    last = plans[-1]
    assert last.phase == "Progressing"
    assert last.memory.wave_index == 0 and last.memory.wave_sites == ("s1",)
    assert last.analyze is not None
    assert (last.analyze.wave, last.analyze.digest) == (0, B)
    assert last.analyze.sites == ("s1",)
    # The baseline: the sites still serving the stable digest.
    assert last.analyze.baseline_sites == ("s2", "s3", "s4")
    row = next(r for r in last.sites if r.name == "s1")
    assert "metrics under analysis" in row.message
    assert "WaveSucceeded" not in reasons(plans)


def test_a_passed_analysis_promotes_each_wave_until_the_rollout_completes() -> None:
    sites, plans = run(GATED, answering("Passed"), steps=20)
    assert plans[-1].phase == "Available"
    assert plans[-1].memory.stable_digest == B
    assert reasons(plans).count("AnalysisPassed") == 3  # canary, then two waves of two
    assert all(n.serves(B) for s in sites for n in s.nodes)
    passed = next(e for p in plans for e in p.events if e.reason == "AnalysisPassed")
    assert passed.message.startswith("wave 0 (canary): analysis passed on 100 request(s)")
    # The last wave leaves no site on the stable digest: it has no baseline.
    last_request = [p.analyze for p in plans if p.analyze is not None][-1]
    assert last_request.baseline_sites == ()


def test_a_failed_analysis_rolls_back_naming_site_metric_value_and_threshold() -> None:
    sites, plans = run(GATED, answering("Failed"), steps=10)
    failed = next(p for p in plans if p.memory.failed_site is not None)
    assert failed.phase == "RolledBack"
    assert failed.memory.failed_site == "s1"
    assert failed.memory.failure_message == (
        "site s1: analysis: errorRatio 0.4 > 0.05 (spec.rollout.analysis.maxErrorRatio)"
    )
    events = {e.reason: e for e in failed.events}
    assert events["AnalysisFailed"].type == "Warning"
    assert "site s1: errorRatio 0.4 > 0.05" in events["AnalysisFailed"].message
    assert {"WaveFailed", "RolledBack"} <= set(events)
    assert failed.analyze is None
    assert all(n.serves(A) for s in sites for n in s.nodes)


def test_an_inconclusive_analysis_waits_and_fails_at_the_progress_deadline() -> None:
    policy = replace(GATED, progress_deadline_seconds=60)
    answer = answering("Inconclusive")
    _, plans = run(policy, answer, steps=10)
    assert "WaveSucceeded" not in reasons(plans)
    waiting = plans[3]
    assert waiting.phase == "Progressing" and waiting.analyze is not None
    failed = next(p for p in plans if p.memory.failed_site is not None)
    assert failed.phase == "RolledBack"
    assert failed.memory.failure_message is not None
    assert "analysis inconclusive: Inconclusive within 60s" in failed.memory.failure_message


def test_an_inconclusive_analysis_fails_at_once_under_inconclusive_fail() -> None:
    assert GATED.analysis is not None
    policy = replace(GATED, analysis=replace(GATED.analysis, inconclusive="Fail"))
    answer = answering("Inconclusive")
    _, plans = run(policy, answer, steps=6)
    failed = next(p for p in plans if p.memory.failed_site is not None)
    assert failed.memory.failure_message == "site s1: analysis inconclusive: Inconclusive"
    assert "AnalysisFailed" in [e.reason for e in failed.events]


def test_a_verdict_about_another_wave_or_digest_is_ignored() -> None:
    def stale(plan: RolloutPlan) -> WaveAnalysis | None:
        if plan.analyze is None:
            return None
        return WaveAnalysis(plan.analyze.wave + 1, plan.analyze.digest, verdict("Passed"))

    def other_digest(plan: RolloutPlan) -> WaveAnalysis | None:
        if plan.analyze is None:
            return None
        return WaveAnalysis(plan.analyze.wave, A, verdict("Passed"))

    for answer in (stale, other_digest):
        _, plans = run(GATED, answer, steps=8)
        assert "WaveSucceeded" not in reasons(plans)
        assert plans[-1].memory.wave_index == 0


def test_a_running_window_waits() -> None:
    _, plans = run(GATED, answering("Running"), steps=8)
    assert "WaveSucceeded" not in reasons(plans)
    assert plans[-1].analyze is not None


def test_without_analysis_a_ready_wave_succeeds_as_before() -> None:
    policy = replace(GATED, analysis=None)
    _, plans = run(policy, lambda _plan: None, steps=12)
    assert plans[-1].phase == "Available"
    assert all(p.analyze is None for p in plans)
    assert "AnalysisPassed" not in reasons(plans)
