"""Tiny constructors and a fleet simulator for the rollout planner tests: applying a plan
replaces pods from their site's template, and a tick brings pods up or makes them fail."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from fogline.rollout import (
    NodeObservation,
    PodObservation,
    RolloutMemory,
    RolloutPlan,
    RolloutPolicy,
    SiteObservation,
    plan_rollout,
)
from fogline.rollout.state import PlanInputs

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def node(
    name: str,
    digest: str | None = A,
    *,
    ready: bool = True,
    locked: bool = False,
    pod_ready: bool = True,
    failure: str | None = None,
) -> NodeObservation:
    pod = None if digest is None else PodObservation(digest, pod_ready and not failure, failure)
    return NodeObservation(name, ready=ready, locked=locked, pod=pod)


def site(
    name: str,
    digest: str | None = A,
    nodes: int = 2,
    *,
    paused: bool = False,
    maintenance: bool = False,
    ready: bool = True,
) -> SiteObservation:
    """A site of ``nodes`` nodes named ``<site>-0``, ``<site>-1``…, all running ``digest``."""
    return SiteObservation(
        name,
        tuple(node(f"{name}-{i}", digest, ready=ready) for i in range(nodes)),
        paused=paused,
        maintenance=maintenance,
    )


def fleet(names: Iterable[str], digest: str | None = A, nodes: int = 2) -> list[SiteObservation]:
    return [site(name, digest, nodes) for name in names]


def available(digest: str, sites: Iterable[SiteObservation]) -> RolloutMemory:
    """Memory of a fleet that completed a rollout of ``digest``."""
    return RolloutMemory(
        target_digest=digest,
        stable_digest=digest,
        phase="Available",
        stage="Complete",
        site_digests={s.name: digest for s in sites},
    )


def with_node(sites: list[SiteObservation], name: str, **changes: object) -> list[SiteObservation]:
    """The fleet with node ``name`` changed (``ready``, ``locked``, ``pod``)."""
    out = []
    for s in sites:
        nodes = tuple(replace(n, **changes) if n.name == name else n for n in s.nodes)  # type: ignore[arg-type]
        out.append(replace(s, nodes=nodes))
    return out


def with_site(sites: list[SiteObservation], name: str, **changes: object) -> list[SiteObservation]:
    return [replace(s, **changes) if s.name == name else s for s in sites]  # type: ignore[arg-type]


def digests(sites: Iterable[SiteObservation]) -> dict[str, str | None]:
    return {n.name: (n.pod.digest if n.pod else None) for s in sites for n in s.nodes}


PodFate = Callable[[str], str]
"""Given a digest, what its pods do after a tick: "ready", "slow" (not Ready yet) or a
failure reason such as "CrashLoopBackOff"."""


def healthy(_digest: str) -> str:
    return "ready"


def apply_plan(sites: list[SiteObservation], plan: RolloutPlan) -> list[SiteObservation]:
    """Delete the pods the plan names; the per-site DaemonSet recreates them (and creates
    missing ones on Ready nodes) from the site's template, not Ready yet."""
    doomed = set(plan.replace_pods_on)
    out = []
    for s in sites:
        template = plan.site_digests.get(s.name)
        nodes = []
        for n in s.nodes:
            pod = n.pod
            if n.name in doomed:
                assert n.ready and not n.locked, f"replaced a pod on {n.name}"
                pod = None
            if pod is None and template is not None and n.ready:
                pod = PodObservation(template, ready=False)
            nodes.append(replace(n, pod=pod))
        out.append(replace(s, nodes=tuple(nodes)))
    return out


def tick(sites: list[SiteObservation], fate: PodFate = healthy) -> list[SiteObservation]:
    """Pods that are coming up on Ready nodes become Ready, stay slow, or fail."""
    out = []
    for s in sites:
        nodes = []
        for n in s.nodes:
            pod = n.pod
            if n.ready and pod is not None and not pod.ready and pod.failure is None:
                outcome = fate(pod.digest)
                if outcome == "ready":
                    pod = replace(pod, ready=True)
                elif outcome != "slow":
                    pod = replace(pod, failure=outcome)
            nodes.append(replace(n, pod=pod))
        out.append(replace(s, nodes=tuple(nodes)))
    return out


def drive(
    sites: list[SiteObservation],
    policy: RolloutPolicy,
    memory: RolloutMemory,
    target: str,
    *,
    start: float = 0.0,
    step: float = 10.0,
    steps: int = 60,
    fate: PodFate = healthy,
    until: Callable[[RolloutPlan], bool] | None = None,
) -> tuple[list[SiteObservation], list[RolloutPlan]]:
    """Reconcile ``steps`` times, ``step`` seconds apart, applying every plan; stop early
    once ``until`` holds for a plan (that plan is applied too)."""
    plans: list[RolloutPlan] = []
    for i in range(steps):
        plan = plan_rollout(sites, policy, memory, target, at(start + i * step))
        plans.append(plan)
        memory = plan.memory
        sites = tick(apply_plan(sites, plan), fate)
        if until is not None and until(plan):
            break
    return sites, plans


def reasons(plans: Iterable[RolloutPlan]) -> list[str]:
    return [event.reason for plan in plans for event in plan.events]


def inputs(
    sites: list[SiteObservation],
    memory: RolloutMemory | None = None,
    policy: RolloutPolicy | None = None,
    target: str = B,
    now: float = 0.0,
) -> PlanInputs:
    """One planner call's inputs, for tests of a single rule or check."""
    return PlanInputs.of(
        sites, policy or RolloutPolicy(), memory or RolloutMemory(), target, at(now)
    )


def mid_wave(
    sites: Iterable[SiteObservation],
    wave: tuple[str, ...],
    *,
    stable: str | None = A,
    target: str = B,
    started: float = 0.0,
    wave_index: int = 0,
) -> RolloutMemory:
    """Memory of a rollout of ``target`` whose wave ``wave`` started at ``started``."""
    names = [s.name for s in sites]
    return RolloutMemory(
        target_digest=target,
        stable_digest=stable,
        phase="Progressing",
        stage="Rollout",
        wave_index=wave_index,
        wave_sites=wave,
        wave_started_at=at(started),
        site_digests={n: target if n in wave else (stable or target) for n in names},
    )
