"""The rollout planner: observed sites, the policy and remembered state in; template digests,
pods to replace, status and events out. Pure: no I/O, no clock reads, no Kubernetes types.
The rules, with worked examples, are in docs/rollout.md; ``plan_rollout`` states them briefly."""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from fogline.rollout.memory import Phase, RolloutMemory, Stage
from fogline.rollout.messages import short_digest, site_names_text
from fogline.rollout.observations import SiteObservation
from fogline.rollout.plan import (
    EventType,
    PlanEvent,
    RolloutCounts,
    RolloutPlan,
    SiteState,
    SiteStatus,
)
from fogline.rollout.policy import RolloutPolicy
from fogline.rollout.sites import (
    converged,
    needs_replacement,
    pod_failure,
    refused_in_wave,
    replacements,
)


def plan_rollout(
    sites: Sequence[SiteObservation],
    policy: RolloutPolicy,
    memory: RolloutMemory,
    target_digest: str,
    now: datetime,
) -> RolloutPlan:
    """Decide the next step of the rollout of ``target_digest``.

    The rules, in order (docs/rollout.md has them in full):

    1. A target different from ``memory.target_digest``, or ``policy.retry`` above
       ``memory.retry_observed`` after a failure, starts a rollout from wave 0.
    2. ``policy.paused``: nothing is replaced, no wave starts, the deadline clock stops.
    3. Without a stable digest (first deploy) wave 0 is every eligible site. Otherwise wave
       0 is the canary, ``canary_sites`` sites, then waves of W sites (``wave_width``),
       in site-name order, ``pause_seconds`` apart. Eligible: neither paused nor in
       maintenance; under ``disconnected == "Skip"`` also reachable.
    4. Inside a wave site, every Ready, unlocked node moves to the target: pods that are
       not Ready are replaced at once, Ready ones one at a time, and only when no pod of the
       site is still coming up, so a site keeps serving during its update.
    5. A wave succeeds when every Ready, unlocked node of its sites serves the target.
       It fails when a pod on the target reports a failure, or when the progress deadline
       passes first; the clock stops while a wave waits for a disconnected site (Wait).
    6. On failure, with ``auto_rollback`` and a stable digest to return to, every site
       not on the stable digest converges back to it (phase RolledBack); otherwise the
       rollout holds (phase Failed).
    7. After completion (and during a rollback) sites that fall behind converge without a
       new rollout, at most W at a time; a site whose new pods fail keeps its slot.
    8. A target becomes stable only once a site was seen serving it: with every remaining
       site unreachable, held or locked, the rollout waits rather than completes.
    """
    work = _Work.begin(sites, policy, memory, target_digest, now)
    work.start_rollout_if_asked(memory)
    work.track_pause(memory)
    if not policy.paused:
        if work.stage == "Rollout":
            work.advance_rollout()
        if work.stage == "Complete":
            work.converge(work.target)
        elif work.stage == "RolledBack" and work.stable is not None:
            work.converge(work.stable)
        work.template_unplaced_sites()
    return work.finish()


@dataclass
class _Work:
    """The planner's scratch state for one call; frozen into a RolloutMemory at the end."""

    sites: dict[str, SiteObservation]
    policy: RolloutPolicy
    now: datetime
    target: str
    stable: str | None
    stage: Stage
    wave_index: int
    wave_sites: list[str]
    wave_started_at: datetime | None
    wave_stopped_seconds: float
    clock_stopped_at: datetime | None
    next_wave_not_before: datetime | None
    completed: set[str]
    skipped: set[str]
    converging: list[str]
    rolled_back: set[str]
    templates: dict[str, str]
    failed_site: str | None
    failure_message: str | None
    retry_observed: int
    paused: bool
    events: list[PlanEvent] = field(default_factory=list)
    replacements: dict[str, tuple[str, ...]] = field(default_factory=dict)
    requeue: list[float] = field(default_factory=list)

    @classmethod
    def begin(
        cls,
        sites: Sequence[SiteObservation],
        policy: RolloutPolicy,
        memory: RolloutMemory,
        target: str,
        now: datetime,
    ) -> _Work:
        by_name = {site.name: site for site in sorted(sites, key=lambda s: s.name)}
        if len(by_name) != len(sites):
            raise ValueError("sites: two observations share a site name")
        # Removed sites simply drop out of everything remembered.
        present = by_name.__contains__
        return cls(
            sites=by_name,
            policy=policy,
            now=now,
            target=target,
            stable=memory.stable_digest,
            stage=memory.stage,
            wave_index=memory.wave_index,
            wave_sites=[s for s in memory.wave_sites if present(s)],
            wave_started_at=memory.wave_started_at,
            wave_stopped_seconds=memory.wave_stopped_seconds,
            clock_stopped_at=memory.clock_stopped_at,
            next_wave_not_before=memory.next_wave_not_before,
            completed={s for s in memory.completed_sites if present(s)},
            skipped={s for s in memory.skipped_sites if present(s)},
            converging=[s for s in memory.converging_sites if present(s)],
            rolled_back={s for s in memory.rolled_back_sites if present(s)},
            templates={s: d for s, d in memory.site_digests.items() if present(s)},
            failed_site=memory.failed_site,
            failure_message=memory.failure_message,
            retry_observed=memory.retry_observed,
            paused=memory.paused,
        )

    # -- bookkeeping ---------------------------------------------------------------------

    def emit(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append(PlanEvent(type_, reason, message))

    def width(self) -> int:
        return self.policy.width(sum(1 for site in self.sites.values() if not site.held))

    def replace(self, site: SiteObservation, digest: str) -> None:
        nodes = replacements(site, digest)
        if nodes:
            self.replacements[site.name] = nodes

    def stop_clock(self) -> None:
        if self.clock_stopped_at is None:
            self.clock_stopped_at = self.now

    def resume_clock(self) -> None:
        if self.clock_stopped_at is not None:
            stopped = (self.now - self.clock_stopped_at).total_seconds()
            self.wave_stopped_seconds += max(0.0, stopped)
            self.clock_stopped_at = None

    def clear_wave(self) -> None:
        self.wave_sites = []
        self.wave_started_at = None
        self.wave_stopped_seconds = 0.0
        self.clock_stopped_at = None

    def wave_label(self) -> str:
        if self.stable is None:
            return "wave 0 (first deploy)"
        if self.wave_index == 0 and self.policy.canary_sites > 0:
            return "wave 0 (canary)"
        return f"wave {self.wave_index}"

    def skip(self, name: str) -> None:
        if name not in self.skipped:
            self.skipped.add(name)
            self.emit(
                "Warning",
                "SiteSkipped",
                f"site {name} is unreachable (every node NotReady); the rollout goes on "
                "without it and brings it to the current digest when it returns",
            )

    # -- rules ---------------------------------------------------------------------------

    def start_rollout_if_asked(self, memory: RolloutMemory) -> None:
        changed = memory.target_digest != self.target
        retry = memory.stage in ("RolledBack", "Failed") and self.policy.retry > (
            memory.retry_observed
        )
        self.retry_observed = max(memory.retry_observed, self.policy.retry)
        if not (changed or retry):
            return
        if not changed:
            self.emit(
                "Normal",
                "RolloutRetried",
                f"spec.rollout.retry is {self.policy.retry}: rolling out "
                f"{short_digest(self.target)} again from wave 0",
            )
        elif self.stable is None:
            self.emit(
                "Normal",
                "RolloutStarted",
                f"first deploy of {short_digest(self.target)} to every eligible site",
            )
        else:
            self.emit(
                "Normal",
                "RolloutStarted",
                f"rolling out {short_digest(self.target)} to replace "
                f"{short_digest(self.stable)}, canary first",
            )
        # Sites caught mid-update (an interrupted wave or convergence) stay listed: the
        # first wave takes them first, so that they never add to what a wave takes down.
        previous = memory.target_digest
        moving = [
            name
            for name in self.wave_sites
            if previous is not None and not converged(self.sites[name], previous)
        ]
        self.converging = list(dict.fromkeys([*self.converging, *moving]))
        self.stage = "Rollout"
        self.wave_index = 0
        self.clear_wave()
        self.next_wave_not_before = None
        self.completed = set()
        self.skipped = set()
        self.rolled_back = set()
        self.failed_site = None
        self.failure_message = None

    def track_pause(self, memory: RolloutMemory) -> None:
        if self.policy.paused:
            if not memory.paused:
                self.emit(
                    "Normal",
                    "RolloutPaused",
                    "spec.rollout.paused is set: no pod is replaced and no wave starts "
                    "until it is cleared",
                )
            if self.wave_sites:
                self.stop_clock()
        elif memory.paused:
            self.emit("Normal", "RolloutResumed", "spec.rollout.paused was cleared")
        self.paused = self.policy.paused

    def advance_rollout(self) -> None:
        # Each turn finishes or starts one wave; a wave takes at least one pending site,
        # so twice the number of sites (plus slack) bounds the turns.
        for _ in range(2 * len(self.sites) + 4):
            if self.wave_sites:
                if not self.evaluate_wave():
                    return
            elif not self.start_next_wave():
                return

    def evaluate_wave(self) -> bool:
        """Judge the wave in progress; True when it succeeded (a next wave may start)."""
        unfinished: list[SiteObservation] = []
        waiting: list[str] = []
        for name in self.wave_sites:
            site = self.sites[name]
            if site.held or (site.reachable and not site.workable_nodes()):
                # Held, or every Ready node locked: nothing to do here, nothing to wait for.
                continue
            if not site.reachable:
                if self.policy.disconnected == "Wait":
                    waiting.append(name)
                else:
                    self.skip(name)
                continue
            failure = refused_in_wave(site, self.wave_started_at) or pod_failure(site, self.target)
            if failure is not None:
                self.fail(name, failure)
                return False
            if not converged(site, self.target):
                unfinished.append(site)
        if not unfinished and not waiting:
            self.succeed_wave()
            return True
        if waiting or self.paused:
            self.stop_clock()
        else:
            self.resume_clock()
        if self.clock_stopped_at is None and self.wave_started_at is not None:
            budget = self.policy.progress_deadline_seconds + self.wave_stopped_seconds
            deadline = self.wave_started_at + timedelta(seconds=budget)
            if self.now >= deadline:
                site = unfinished[0]
                nodes = site.workable_nodes()
                serving = sum(1 for n in nodes if n.serves(self.target))
                self.fail(
                    site.name,
                    f"{len(nodes) - serving} of {len(nodes)} nodes not Ready on "
                    f"{short_digest(self.target)} within "
                    f"{self.policy.progress_deadline_seconds:g}s (progressDeadlineSeconds)",
                )
                return False
            self.requeue.append((deadline - self.now).total_seconds())
        for site in unfinished:
            self.replace(site, self.target)
        return False

    def succeed_wave(self) -> None:
        done = [
            name
            for name in self.wave_sites
            if not self.sites[name].held
            and self.sites[name].reachable
            and self.sites[name].workable_nodes()
        ]
        self.completed.update(done)
        self.emit(
            "Normal",
            "WaveSucceeded",
            f"{self.wave_label()} is Ready on {short_digest(self.target)}: "
            f"{site_names_text(done) if done else 'no site left to update'}",
        )
        self.wave_index += 1
        self.clear_wave()
        if self.policy.pause_seconds > 0:
            self.next_wave_not_before = self.now + timedelta(seconds=self.policy.pause_seconds)

    def start_next_wave(self) -> bool:
        """Start the next wave; False when waiting for the pause or the rollout completed."""
        pending = [
            name
            for name, site in self.sites.items()
            if not site.held and name not in self.completed
        ]
        # Sites that already serve the target need no wave (for example after the target
        # went back to a digest they still run).
        for name in pending:
            site = self.sites[name]
            if site.workable_nodes() and converged(site, self.target):
                self.templates[name] = self.target
                self.completed.add(name)
        pending = [name for name in pending if name not in self.completed]
        if self.policy.disconnected == "Skip":
            for name in pending:
                if not self.sites[name].reachable:
                    self.skip(name)
        # A reachable site whose Ready nodes are all locked has nothing to update now; it
        # follows after completion, like a site that was skipped.
        pending = [
            name
            for name in pending
            if self.sites[name].workable_nodes()
            or (not self.sites[name].reachable and self.policy.disconnected == "Wait")
        ]
        if not pending:
            # A digest that no site has run yet is not proven: with every remaining site
            # unreachable or held, or no site at all, wait for one instead of calling it
            # stable (a rollout to no node is no revision and no RolloutComplete).
            if self.completed:
                self.complete()
            return False
        if self.next_wave_not_before is not None and self.now < self.next_wave_not_before:
            self.requeue.append((self.next_wave_not_before - self.now).total_seconds())
            return False
        if self.stable is None:
            size = len(pending)
        elif self.wave_index == 0 and self.policy.canary_sites > 0:
            size = self.policy.canary_sites
        else:
            size = self.width()
        carried = [name for name in self.converging if name in pending]
        fresh = [name for name in pending if name not in carried]
        chosen = carried + fresh[: max(0, size - len(carried))]
        self.converging = []
        for name in chosen:
            self.templates[name] = self.target
            self.skipped.discard(name)
        self.wave_sites = chosen
        self.wave_started_at = self.now
        self.wave_stopped_seconds = 0.0
        self.clock_stopped_at = None
        self.next_wave_not_before = None
        self.emit(
            "Normal",
            "WaveStarted",
            f"{self.wave_label()}: updating {site_names_text(chosen)} to {short_digest(self.target)}",
        )
        return True

    def complete(self) -> None:
        self.stage = "Complete"
        self.stable = self.target
        self.clear_wave()
        self.next_wave_not_before = None
        skipped = sorted(self.skipped)
        note = f"; {len(skipped)} unreachable site(s) follow when they return" if skipped else ""
        self.emit(
            "Normal",
            "RolloutComplete",
            f"{short_digest(self.target)} is the current digest on "
            f"{len(self.completed)} site(s){note}",
        )

    def fail(self, site: str, reason: str) -> None:
        self.failed_site = site
        self.failure_message = f"site {site}: {reason}"
        self.emit("Warning", "WaveFailed", f"{self.wave_label()} failed: {self.failure_message}")
        wave = list(self.wave_sites)
        self.clear_wave()
        self.next_wave_not_before = None
        stable = self.stable
        if self.policy.auto_rollback and stable is not None and stable != self.target:
            self.stage = "RolledBack"
            self.rolled_back = {name for name, d in self.templates.items() if d != stable}
            # The failed wave's sites go first: they are already out of service.
            self.converging = [
                name for name in wave if not self.sites[name].held and self.sites[name].reachable
            ]
            self.emit(
                "Warning",
                "RolledBack",
                f"returning {len(self.rolled_back)} site(s) to {short_digest(stable)} "
                f"after {self.failure_message}",
            )
            return
        self.stage = "Failed"
        why = (
            "spec.rollout.autoRollback is off"
            if not self.policy.auto_rollback
            else "there is no earlier digest to return to"
        )
        self.emit(
            "Warning",
            "RolloutFailed",
            f"rollout of {short_digest(self.target)} holds ({why}); sites keep what they "
            "run. Change the digest, or raise spec.rollout.retry after a fix",
        )

    def converge(self, digest: str) -> None:
        """Bring every reachable, unheld site to ``digest``, at most W sites at a time."""
        width = self.width()
        self.converging = [
            name
            for name in self.converging
            if not self.sites[name].held
            and self.sites[name].reachable
            # A site whose new pods fail keeps its slot: a digest that fails on the sites
            # it converges never takes down more than W of them.
            and not converged(self.sites[name], digest)
        ]
        admitted = set(self.converging)
        for name, site in self.sites.items():
            if site.held:
                continue
            # Templates follow at once (the DaemonSets replace nothing by themselves);
            # admission limits which sites get their pods replaced.
            self.templates[name] = digest
            if (
                site.reachable
                and name not in admitted
                and len(self.converging) < width
                and needs_replacement(site, digest)
            ):
                self.converging.append(name)
                admitted.add(name)
        for name in self.converging:
            self.replace(self.sites[name], digest)

    def template_unplaced_sites(self) -> None:
        """A site that never had a workload gets the digest the fleet runs: the stable one,
        or the target during a first deploy. It has nothing to protect."""
        digest = self.stable
        if digest is None and self.stage == "Rollout":
            digest = self.target
        if digest is None:
            return
        for name, site in self.sites.items():
            if not site.held and name not in self.templates:
                self.templates[name] = digest

    # -- status --------------------------------------------------------------------------

    def desired_digest(self) -> str | None:
        """The digest the fleet settles on in the current stage."""
        if self.stage in ("RolledBack", "Failed"):
            return self.stable
        return self.target

    def site_row(
        self, site: SiteObservation, wave: AbstractSet[str], converging: AbstractSet[str]
    ) -> SiteStatus:
        digest = self.templates.get(site.name)
        state, message = self.site_state(site, digest, wave, converging)
        notes = [message] if message else []
        down = [n.name for n in site.nodes if not n.ready]
        if down and site.reachable:
            notes.append(f"NotReady (not updated until back): {', '.join(sorted(down))}")
        locked = [
            n.name
            for n in site.nodes
            if n.locked and n.ready and digest is not None and not n.runs(digest)
        ]
        if locked:
            notes.append(f"update deferred by fogline.io/update-lock: {', '.join(sorted(locked))}")
        return SiteStatus(
            name=site.name,
            digest=digest,
            state=state,
            desired=len(site.nodes),
            updated=sum(1 for n in site.nodes if digest is not None and n.runs(digest)),
            ready=sum(1 for n in site.nodes if digest is not None and n.serves(digest)),
            reachable=site.reachable,
            message="; ".join(notes),
        )

    def site_state(
        self,
        site: SiteObservation,
        digest: str | None,
        wave: AbstractSet[str],
        converging: AbstractSet[str],
    ) -> tuple[SiteState, str]:
        """A site's row state and note. `wave` and `converging` are the wave's and the
        converging sites as sets: a list lookup per site made status quadratic in sites."""
        name = site.name
        if site.paused:
            return "Paused", "listed in spec.rollout.pausedSites"
        if site.maintenance:
            return "Paused", "in maintenance (a node has fogline.io/maintenance=true)"
        if not site.reachable:
            if self.policy.disconnected == "Wait" and name in wave:
                return "Unreachable", "every node NotReady; the wave waits for it"
            return "Unreachable", "every node NotReady; it converges when it returns"
        if self.stage == "Failed" and name == self.failed_site:
            return "Failed", self.failure_message or ""
        if (blocked := site.blocked) is not None:
            return "Failed", blocked
        for node in sorted(site.nodes, key=lambda n: n.name):
            if node.ready and node.pod is not None and node.pod.failure:
                return "Failed", f"node {node.name}: pod {node.pod.failure}"
        if digest is None:
            return "Pending", "no workload yet"
        if name in wave:
            if converged(site, self.target):
                return "Ready", f"{self.wave_label()} done"
            return "Updating", f"{self.wave_label()}"
        if name in converging:
            return "Updating", f"converging to {short_digest(digest)}"
        if self.stage == "Rollout" and name not in self.completed:
            if name in self.skipped:
                return "Skipped", "passed over while unreachable; a later wave takes it"
            return "Pending", f"waits for a wave to {short_digest(self.target)}"
        if self.stage == "Failed" and digest != self.target:
            return "Pending", f"rollout held after failure at site {self.failed_site}"
        desired = self.desired_digest() if self.stage != "Failed" else digest
        if desired is not None and (digest != desired or needs_replacement(site, desired)):
            return "Pending", "waits for a free slot (maxUnavailable)"
        if not converged(site, digest):
            return "Updating", "pods coming up"
        if self.stage == "RolledBack" and name in self.rolled_back:
            return "RolledBack", f"back on {short_digest(digest)}"
        return "Ready", ""

    def phase(self) -> tuple[Phase, str]:
        if self.stage == "Failed":
            return "Failed", self.failure_message or "rollout failed"
        if self.stage == "RolledBack":
            return "RolledBack", f"rolled back: {self.failure_message}"
        if self.policy.paused:
            return "Paused", "spec.rollout.paused is set"
        if not self.sites:
            return "Pending", "no edge node matches the placement"
        if self.stage == "Rollout":
            if self.wave_sites:
                return "Progressing", f"{self.wave_label()}: {site_names_text(self.wave_sites)}"
            if self.next_wave_not_before is not None:
                return "Progressing", "pausing between waves"
            return "Progressing", "waiting for a site that is reachable and not held"
        problems: list[str] = []
        unheld = [s for s in self.sites.values() if not s.held]
        unreachable = [s.name for s in unheld if not s.reachable]
        if unreachable:
            problems.append(f"unreachable sites: {site_names_text(unreachable)}")
        down = sum(1 for s in unheld if s.reachable for n in s.nodes if not n.ready)
        if down:
            problems.append(f"{down} node(s) NotReady")
        failing = sum(
            1
            for s in unheld
            for n in s.nodes
            if n.ready and n.pod is not None and n.pod.failure is not None
        )
        if failing:
            problems.append(f"{failing} pod(s) failing")
        problems += [f"site {s.name}: {s.blocked}" for s in unheld if s.reachable and s.blocked]
        # Running but not Ready (a probe that fails, a model that stopped answering): the
        # rollout is done, but these nodes do not serve.
        unready = sum(
            1
            for s in unheld
            for n in s.nodes
            if n.ready and n.pod is not None and n.pod.failure is None and not n.pod.ready
        )
        if unready:
            problems.append(f"{unready} pod(s) not Ready")
        if problems:
            return "Degraded", "; ".join(problems)
        return "Available", f"{short_digest(self.target)} on every reachable site"

    def finish(self) -> RolloutPlan:
        wave, converging = set(self.wave_sites), set(self.converging)
        rows = tuple(self.site_row(site, wave, converging) for site in self.sites.values())
        phase, message = self.phase()
        nodes = [n for site in self.sites.values() for n in site.nodes]
        counts = RolloutCounts(
            sites=len(self.sites),
            sites_updated=sum(
                1 for s in self.sites.values() if all(n.runs(self.target) for n in s.nodes)
            ),
            sites_ready=sum(
                1
                for s in self.sites.values()
                if (d := self.templates.get(s.name)) is not None
                and all(n.serves(d) for n in s.nodes)
            ),
            nodes=len(nodes),
            nodes_updated=sum(1 for n in nodes if n.runs(self.target)),
            nodes_ready=sum(1 for n in nodes if n.ready and n.pod is not None and n.pod.ready),
        )
        memory = RolloutMemory(
            target_digest=self.target,
            stable_digest=self.stable,
            phase=phase,
            stage=self.stage,
            wave_index=self.wave_index,
            wave_sites=tuple(self.wave_sites),
            wave_started_at=self.wave_started_at,
            wave_stopped_seconds=self.wave_stopped_seconds,
            clock_stopped_at=self.clock_stopped_at,
            next_wave_not_before=self.next_wave_not_before,
            completed_sites=tuple(sorted(self.completed)),
            skipped_sites=tuple(sorted(self.skipped)),
            converging_sites=tuple(self.converging),
            rolled_back_sites=tuple(sorted(self.rolled_back)),
            site_digests=dict(sorted(self.templates.items())),
            failed_site=self.failed_site,
            failure_message=self.failure_message,
            retry_observed=self.retry_observed,
            paused=self.paused,
        )
        replace = tuple(
            node for site in sorted(self.replacements) for node in self.replacements[site]
        )
        return RolloutPlan(
            site_digests=dict(memory.site_digests),
            replace_pods_on=replace,
            memory=memory,
            phase=phase,
            sites=rows,
            events=tuple(self.events),
            requeue_after=min(self.requeue) if self.requeue else None,
            counts=counts,
            message=message,
        )
