"""Property tests for the rollout planner: whatever the fleet does (nodes dropping out,
locks coming and going, slow pods, sites paused), the plan keeps its safety rules and a
healthy rollout always converges."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fogline.api.edgedeployment import AnalysisSpec
from fogline.rollout import RolloutMemory, RolloutPlan, RolloutPolicy, SiteObservation, plan_rollout
from fogline.rollout.analysis import (
    AnalysisFailure,
    AnalysisRequest,
    AnalysisVerdict,
    VerdictPhase,
    WaveAnalysis,
)
from tests.unit.rollout_fleet import A, B, C, apply_plan, at, available, fleet, healthy, tick

pytestmark = pytest.mark.unit

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
STEP_SECONDS = 10.0


@dataclass(frozen=True)
class Disturbance:
    """At ``step``, flip one thing about node ``node`` (an index into all nodes) or site."""

    step: int
    kind: str  # "ready", "lock", "slow", "hold", "retarget"
    index: int


policies = st.builds(
    RolloutPolicy,
    canary_sites=st.integers(0, 2),
    max_unavailable=st.one_of(st.integers(1, 3), st.sampled_from(["25%", "50%", "100%"])),
    pause_seconds=st.sampled_from([0.0, 15.0, 30.0]),
    progress_deadline_seconds=st.just(3600.0),
    disconnected=st.sampled_from(["Skip", "Wait"]),
)
shapes = st.lists(st.integers(1, 3), min_size=2, max_size=6)


def disturbances(kinds: list[str]) -> st.SearchStrategy[list[Disturbance]]:
    return st.lists(
        st.builds(Disturbance, st.integers(0, 25), st.sampled_from(kinds), st.integers(0, 50)),
        max_size=12,
    )


def crash_loops(digest: str) -> str:
    return "CrashLoopBackOff" if digest == B else "ready"


def build_fleet(shape: list[int]) -> list[SiteObservation]:
    sites: list[SiteObservation] = []
    for i, nodes in enumerate(shape):
        sites.extend(fleet([f"s{i}"], A, nodes))
    return sites


def disturb(sites: list[SiteObservation], d: Disturbance) -> list[SiteObservation]:
    if d.kind == "hold":
        target = sites[d.index % len(sites)].name
        return [replace(s, paused=not s.paused) if s.name == target else s for s in sites]
    names = [n.name for s in sites for n in s.nodes]
    chosen = names[d.index % len(names)]
    out = []
    for s in sites:
        nodes = []
        for n in s.nodes:
            if n.name == chosen and d.kind == "ready":
                nodes.append(replace(n, ready=not n.ready))
            elif n.name == chosen and d.kind == "lock":
                nodes.append(replace(n, locked=not n.locked))
            else:
                nodes.append(n)
        out.append(replace(s, nodes=tuple(nodes)))
    return out


def restore(sites: list[SiteObservation]) -> list[SiteObservation]:
    """Every node Ready and unlocked, no site paused: the world settles down."""
    return [
        replace(
            s,
            paused=False,
            maintenance=False,
            nodes=tuple(replace(n, ready=True, locked=False) for n in s.nodes),
        )
        for s in sites
    ]


def serves_template(site: SiteObservation, digest: str | None) -> bool:
    return digest is not None and all(n.serves(digest) for n in site.nodes if n.workable)


def width_bound(policy: RolloutPolicy, sites: list[SiteObservation]) -> int:
    eligible = sum(1 for s in sites if not s.held)
    return max(policy.width(eligible), policy.canary_sites)


def check_plan(
    sites: list[SiteObservation], policy: RolloutPolicy, target: str, step: int, plan: RolloutPlan
) -> None:
    """The rules every single plan keeps."""
    by_node = {n.name: (s, n) for s in sites for n in s.nodes}
    for name in plan.replace_pods_on:
        site, node = by_node[name]
        assert node.ready, f"replaced a pod on NotReady node {name}"
        assert not node.locked, f"replaced a pod on locked node {name}"
        assert not site.held, f"replaced a pod in held site {site.name}"
    if policy.paused:
        assert plan.replace_pods_on == ()
    # Planning again from what this plan remembers changes nothing and says nothing.
    again = plan_rollout(sites, policy, plan.memory, target, at(step * STEP_SECONDS))
    assert again.events == ()
    assert again.replace_pods_on == plan.replace_pods_on
    assert again.site_digests == plan.site_digests
    assert again.memory == plan.memory
    assert RolloutMemory.from_dict(plan.memory.to_dict()) == plan.memory


class UpdatingSites:
    """Sites the planner took pods down in and that have not come back to serving their
    template since; a site that turns unreachable or held drops out (nothing touches it)."""

    def __init__(self, policy: RolloutPolicy, templates: dict[str, str]) -> None:
        self.policy = policy
        self.templates = templates
        self.sites: set[str] = set()

    def record(self, sites: list[SiteObservation], plan: RolloutPlan, step: int) -> None:
        """Count after ``plan``: sites it replaces pods in, plus earlier ones not yet serving
        their (possibly new) template."""
        self.templates = plan.site_digests
        by_name = {s.name: s for s in sites}
        self.sites = {
            name
            for name in self.sites
            if name in by_name
            and by_name[name].reachable
            and not by_name[name].held
            and not serves_template(by_name[name], self.templates.get(name))
        }
        doomed = set(plan.replace_pods_on)
        self.sites |= {s.name for s in sites for n in s.nodes if n.name in doomed}
        assert len(self.sites) <= width_bound(self.policy, sites), (
            f"step {step}: {sorted(self.sites)} updating at once"
        )


def run(
    sites: list[SiteObservation],
    policy: RolloutPolicy,
    target: str,
    events: list[Disturbance],
    *,
    steps: int = 30,
    check_width: bool = True,
) -> tuple[list[SiteObservation], RolloutMemory, str]:
    """Reconcile through the disturbances, checking every plan, then return the world."""
    memory = available(A, sites)
    updating = UpdatingSites(policy, dict(memory.site_digests))
    for step in range(steps):
        slow = False
        for d in (d for d in events if d.step == step):
            if d.kind == "slow":
                slow = True
            elif d.kind == "retarget":
                target = C
            else:
                sites = disturb(sites, d)
        plan = plan_rollout(sites, policy, memory, target, at(step * STEP_SECONDS))
        check_plan(sites, policy, target, step, plan)
        if check_width:
            updating.record(sites, plan, step)
        memory = plan.memory
        sites = tick(apply_plan(sites, plan), (lambda _: "slow") if slow else healthy)
    return sites, memory, target


def settle(
    sites: list[SiteObservation],
    policy: RolloutPolicy,
    memory: RolloutMemory,
    target: str,
    start: int,
) -> tuple[list[SiteObservation], RolloutPlan, int]:
    """Reconcile a calm, healthy world until the plan is Available (bounded)."""
    # Waves <= sites + 1, each at most (nodes per site + 2) steps, plus the pauses.
    bound = (len(sites) + 2) * (3 + 2 + int(policy.pause_seconds // STEP_SECONDS) + 1) + 5
    plan = plan_rollout(sites, policy, memory, target, at(start * STEP_SECONDS))
    for i in range(bound):
        now = at((start + i) * STEP_SECONDS)
        plan = plan_rollout(sites, policy, memory, target, now)
        memory = plan.memory
        sites = tick(apply_plan(sites, plan))
        if plan.phase == "Available" and all(n.serves(target) for s in sites for n in s.nodes):
            return sites, plan, i
    raise AssertionError(f"no convergence in {bound} steps: {plan.phase} {plan.message}")


@PROPERTY_SETTINGS
@given(shapes, policies, disturbances(["ready", "lock", "slow", "retarget"]))
def test_waves_never_exceed_width_and_always_converge(
    shape: list[int], policy: RolloutPolicy, events: list[Disturbance]
) -> None:
    sites, memory, target = run(build_fleet(shape), policy, B, events)
    sites = restore(sites)
    sites, plan, _ = settle(sites, policy, memory, target, start=100)
    assert plan.memory.stable_digest == target
    assert all(n.serves(target) for s in sites for n in s.nodes)


@PROPERTY_SETTINGS
@given(shapes, policies, disturbances(["ready", "lock", "hold", "slow"]))
def test_held_sites_are_never_touched_and_converge_once_released(
    shape: list[int], policy: RolloutPolicy, events: list[Disturbance]
) -> None:
    sites, memory, target = run(build_fleet(shape), policy, B, events, check_width=False)
    sites, _, _ = settle(restore(sites), policy, memory, target, start=100)
    assert all(n.serves(B) for s in sites for n in s.nodes)


@PROPERTY_SETTINGS
@given(shapes, policies, st.integers(0, 6), disturbances(["ready", "lock"]))
def test_a_failing_target_is_rolled_back_everywhere_it_landed(
    shape: list[int], policy: RolloutPolicy, fail_at: int, events: list[Disturbance]
) -> None:
    sites = build_fleet(shape)
    memory = available(A, sites)
    updating = UpdatingSites(policy, dict(memory.site_digests))
    plan = plan_rollout(sites, policy, memory, B, at(0))
    for step in range(60):
        for d in (d for d in events if d.step == step):
            sites = disturb(sites, d)
        if step == 30:
            sites = restore(sites)
        plan = plan_rollout(sites, policy, memory, B, at(step * STEP_SECONDS))
        check_plan(sites, policy, B, step, plan)
        updating.record(sites, plan, step)
        memory = plan.memory
        # B comes up fine for a while, then every new B pod crash-loops.
        sites = tick(
            apply_plan(sites, plan),
            crash_loops if step >= fail_at else healthy,
        )
    if plan.memory.stage == "Complete":
        # The rollout finished before B started failing; a later failure on a proven
        # digest is reported (Degraded), not rolled back.
        assert fail_at > 0
        return
    assert plan.phase == "RolledBack", plan.message
    assert set(plan.site_digests.values()) == {A}
    assert all(n.serves(A) for s in sites for n in s.nodes), plan.message


@PROPERTY_SETTINGS
@given(shapes, policies)
def test_paused_policy_never_replaces_anything(shape: list[int], policy: RolloutPolicy) -> None:
    sites = build_fleet(shape)
    paused = replace(policy, paused=True)
    sites, memory, _ = run(sites, paused, B, [], steps=8)
    assert memory.phase == "Paused"
    assert all(n.runs(A) for s in sites for n in s.nodes)


# -- the analysis gate ------------------------------------------------------------------------

VERDICT_PHASES: list[VerdictPhase | None] = [None, "Running", "Inconclusive", "Passed", "Failed"]
gated_policies = st.builds(
    lambda policy, inconclusive: replace(
        policy,
        analysis=AnalysisSpec(window_seconds=20, max_error_ratio=0.05, inconclusive=inconclusive),
    ),
    policies,
    st.sampled_from(["Wait", "Fail"]),
)


def judgeable(sites: list[SiteObservation], name: str) -> bool:
    found = next(s for s in sites if s.name == name)
    return not found.held and found.reachable and bool(found.workable_nodes())


def wave_verdict(phase: VerdictPhase, request: AnalysisRequest, now_seconds: float) -> WaveAnalysis:
    failure = (
        AnalysisFailure(request.sites[0], "errorRatio", 0.5, 0.05) if phase == "Failed" else None
    )
    verdict = AnalysisVerdict(
        phase=phase, started_at=at(now_seconds), requests=50, pods=1, failure=failure, message=phase
    )
    return WaveAnalysis(request.wave, request.digest, verdict)


@PROPERTY_SETTINGS
@given(
    shapes,
    gated_policies,
    st.lists(st.sampled_from(VERDICT_PHASES), min_size=40, max_size=40),
    disturbances(["ready", "lock", "slow"]),
)
def test_only_a_passed_analysis_promotes_a_wave_and_waves_stay_within_width(
    shape: list[int],
    policy: RolloutPolicy,
    answers: list[VerdictPhase | None],
    events: list[Disturbance],
) -> None:
    sites = build_fleet(shape)
    memory = available(A, sites)
    updating = UpdatingSites(policy, dict(memory.site_digests))
    given_analysis: WaveAnalysis | None = None
    for step, phase in enumerate(answers):
        for d in (d for d in events if d.step == step):
            sites = disturb(sites, d)
        now = at(step * STEP_SECONDS)
        plan = plan_rollout(sites, policy, memory, B, now, given_analysis)
        updating.record(sites, plan, step)
        given_phase = given_analysis.verdict.phase if given_analysis is not None else None
        if memory.stage == "Rollout" and memory.target_digest == B:
            promoted = plan.memory.wave_index > memory.wave_index or plan.memory.stage == "Complete"
            # A wave none of whose sites can be judged (held, unreachable, every node
            # locked) has nothing to analyse: it passes as it did without analysis.
            judged = [name for name in memory.wave_sites if judgeable(sites, name)]
            if promoted and judged:
                assert given_analysis is not None and given_phase == "Passed", (
                    f"step {step}: wave {memory.wave_index} promoted on {given_phase}"
                )
                assert given_analysis.wave == memory.wave_index
            if given_phase == "Failed" and given_analysis is not None and plan.analyze is None:
                assert plan.memory.stage != "Complete"
        memory = plan.memory
        request = plan.analyze
        given_analysis = (
            wave_verdict(phase, request, step * STEP_SECONDS)
            if request is not None and phase is not None
            else None
        )
        sites = tick(apply_plan(sites, plan))


@PROPERTY_SETTINGS
@given(shapes, gated_policies, st.integers(0, 20))
def test_a_failed_or_inconclusive_fail_verdict_never_leaves_the_wave_running(
    shape: list[int], policy: RolloutPolicy, answer_at: int
) -> None:
    """A Failed verdict (or an Inconclusive one under inconclusive: Fail) about the wave
    in progress ends the rollout of that target at once: rolled back to the stable one;
    an Inconclusive one under Wait keeps the wave waiting."""
    assert policy.analysis is not None
    sites = build_fleet(shape)
    memory = available(A, sites)
    phase: VerdictPhase = "Failed" if answer_at % 2 else "Inconclusive"
    given_analysis: WaveAnalysis | None = None
    answered = 0
    for step in range(40):
        plan = plan_rollout(sites, policy, memory, B, at(step * STEP_SECONDS), given_analysis)
        if given_analysis is not None:
            answered += 1
            if phase == "Failed" or policy.analysis.inconclusive == "Fail":
                assert plan.memory.stage == "RolledBack", plan.message
                assert plan.memory.failed_site is not None
                assert plan.memory.failed_site in memory.wave_sites
                return
            assert plan.memory.stage == "Rollout"
            assert plan.memory.wave_index == memory.wave_index
        memory = plan.memory
        given_analysis = None
        if plan.analyze is not None and step >= answer_at:
            given_analysis = wave_verdict(phase, plan.analyze, step * STEP_SECONDS)
        sites = tick(apply_plan(sites, plan))
    assert answered > 0


@PROPERTY_SETTINGS
@given(shapes, gated_policies)
def test_passed_analyses_complete_the_rollout(shape: list[int], policy: RolloutPolicy) -> None:
    sites = build_fleet(shape)
    memory = available(A, sites)
    given_analysis: WaveAnalysis | None = None
    plan = plan_rollout(sites, policy, memory, B, at(0))
    for step in range(80):
        plan = plan_rollout(sites, policy, memory, B, at(step * STEP_SECONDS), given_analysis)
        memory = plan.memory
        request = plan.analyze
        given_analysis = wave_verdict("Passed", request, 0) if request is not None else None
        sites = tick(apply_plan(sites, plan))
        if plan.phase == "Available":
            break
    assert plan.phase == "Available", plan.message
    assert all(n.serves(B) for s in sites for n in s.nodes)
