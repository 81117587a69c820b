"""The planner's state during one call, as immutable values: ``PlanInputs`` (what the call
was given) and ``Progress`` (where the rollout stands after each rule, with the Events,
pod replacements and requeue times decided so far). Each rule returns a new ``Progress``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from fogline.rollout.analysis import AnalysisRequest, WaveAnalysis
from fogline.rollout.memory import Phase, RolloutMemory, Stage
from fogline.rollout.observations import SiteObservation
from fogline.rollout.plan import EventType, PlanEvent
from fogline.rollout.policy import RolloutPolicy


@dataclass(frozen=True)
class PlanInputs:
    """One call's inputs: the sites by name in name order, the policy, the memory as it was
    handed in, the target digest, the time, and the verdict of the wave analysis the last
    plan asked for (``RolloutPlan.analyze``), if any."""

    sites: Mapping[str, SiteObservation]
    policy: RolloutPolicy
    memory: RolloutMemory
    target: str
    now: datetime
    analysis: WaveAnalysis | None = None

    @classmethod
    def of(
        cls,
        sites: Sequence[SiteObservation],
        policy: RolloutPolicy,
        memory: RolloutMemory,
        target: str,
        now: datetime,
        analysis: WaveAnalysis | None = None,
    ) -> PlanInputs:
        by_name = {site.name: site for site in sorted(sites, key=lambda s: s.name)}
        if len(by_name) != len(sites):
            raise ValueError("sites: two observations share a site name")
        return cls(by_name, policy, memory, target, now, analysis)

    def width(self) -> int:
        """W: how many sites a wave or convergence may take at once (``wave_width`` of the
        sites that are neither paused nor in maintenance)."""
        return self.policy.width(sum(1 for site in self.sites.values() if not site.held))


@dataclass(frozen=True)
class Progress:
    """Where the rollout stands (the fields of ``RolloutMemory`` as the rules use them) and
    what the rules decided so far: ``events`` in order, ``replacements`` (site -> nodes whose
    pods go now), ``requeue`` (seconds after which the planner wants another look) and
    ``analyze`` (the wave analysis the controller is to run and report back)."""

    stable: str | None
    stage: Stage
    wave_index: int
    wave_sites: tuple[str, ...]
    wave_started_at: datetime | None
    wave_stopped_seconds: float
    clock_stopped_at: datetime | None
    next_wave_not_before: datetime | None
    completed: frozenset[str]
    skipped: frozenset[str]
    converging: tuple[str, ...]
    rolled_back: frozenset[str]
    templates: Mapping[str, str]
    failed_site: str | None
    failure_message: str | None
    retry_observed: int
    paused: bool
    events: tuple[PlanEvent, ...] = ()
    replacements: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    requeue: tuple[float, ...] = ()
    analyze: AnalysisRequest | None = None

    @classmethod
    def recall(cls, inputs: PlanInputs) -> Progress:
        """The remembered state; removed sites simply drop out of everything remembered."""
        memory, present = inputs.memory, inputs.sites.__contains__
        return cls(
            stable=memory.stable_digest,
            stage=memory.stage,
            wave_index=memory.wave_index,
            wave_sites=tuple(s for s in memory.wave_sites if present(s)),
            wave_started_at=memory.wave_started_at,
            wave_stopped_seconds=memory.wave_stopped_seconds,
            clock_stopped_at=memory.clock_stopped_at,
            next_wave_not_before=memory.next_wave_not_before,
            completed=frozenset(s for s in memory.completed_sites if present(s)),
            skipped=frozenset(s for s in memory.skipped_sites if present(s)),
            converging=tuple(s for s in memory.converging_sites if present(s)),
            rolled_back=frozenset(s for s in memory.rolled_back_sites if present(s)),
            templates={s: d for s, d in memory.site_digests.items() if present(s)},
            failed_site=memory.failed_site,
            failure_message=memory.failure_message,
            retry_observed=memory.retry_observed,
            paused=memory.paused,
        )

    def remember(self, target: str, phase: Phase) -> RolloutMemory:
        return RolloutMemory(
            target_digest=target,
            stable_digest=self.stable,
            phase=phase,
            stage=self.stage,
            wave_index=self.wave_index,
            wave_sites=self.wave_sites,
            wave_started_at=self.wave_started_at,
            wave_stopped_seconds=self.wave_stopped_seconds,
            clock_stopped_at=self.clock_stopped_at,
            next_wave_not_before=self.next_wave_not_before,
            completed_sites=tuple(sorted(self.completed)),
            skipped_sites=tuple(sorted(self.skipped)),
            converging_sites=self.converging,
            rolled_back_sites=tuple(sorted(self.rolled_back)),
            site_digests=dict(sorted(self.templates.items())),
            failed_site=self.failed_site,
            failure_message=self.failure_message,
            retry_observed=self.retry_observed,
            paused=self.paused,
        )

    # -- what a rule decides -------------------------------------------------------------

    def emit(self, type_: EventType, reason: str, message: str) -> Progress:
        return replace(self, events=(*self.events, PlanEvent(type_, reason, message)))

    def with_templates(self, names: Iterable[str], digest: str) -> Progress:
        """These sites' workload templates carry ``digest``."""
        return replace(self, templates={**self.templates, **dict.fromkeys(names, digest)})

    def with_replacements(self, found: Mapping[str, tuple[str, ...]]) -> Progress:
        """Replace these pods now (a later decision for a site overrides an earlier one);
        sites with no node to replace are left out."""
        moving = {name: nodes for name, nodes in found.items() if nodes}
        return replace(self, replacements={**self.replacements, **moving})

    def requeue_in(self, seconds: float) -> Progress:
        return replace(self, requeue=(*self.requeue, seconds))

    def pass_over(self, names: Iterable[str]) -> Progress:
        """Skip these unreachable sites; the first time a site is skipped says so."""
        fresh = [name for name in dict.fromkeys(names) if name not in self.skipped]
        events = tuple(
            PlanEvent(
                "Warning",
                "SiteSkipped",
                f"site {name} is unreachable (every node NotReady); the rollout goes on "
                "without it and brings it to the current digest when it returns",
            )
            for name in fresh
        )
        return replace(self, skipped=self.skipped.union(fresh), events=(*self.events, *events))

    # -- the wave's progress-deadline clock ----------------------------------------------

    def stop_clock(self, now: datetime) -> Progress:
        if self.clock_stopped_at is not None:
            return self
        return replace(self, clock_stopped_at=now)

    def resume_clock(self, now: datetime) -> Progress:
        """Add the time the clock stood still to the wave's budget::

        stopped at 12:00:10, resumed at 12:01:40 -> wave_stopped_seconds += 90
        """
        if self.clock_stopped_at is None:
            return self
        stopped = max(0.0, (now - self.clock_stopped_at).total_seconds())
        return replace(
            self,
            wave_stopped_seconds=self.wave_stopped_seconds + stopped,
            clock_stopped_at=None,
        )

    def cleared_wave(self) -> Progress:
        """No wave in progress (and no clock for it)."""
        return replace(
            self,
            wave_sites=(),
            wave_started_at=None,
            wave_stopped_seconds=0.0,
            clock_stopped_at=None,
        )

    def wave_label(self, policy: RolloutPolicy) -> str:
        """How Events and status name the wave in progress (or the next one)."""
        if self.stable is None:
            return "wave 0 (first deploy)"
        if self.wave_index == 0 and policy.canary_sites > 0:
            return "wave 0 (canary)"
        return f"wave {self.wave_index}"
