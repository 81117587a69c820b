"""The report: ``status.sites`` rows, the phase and its message, the counts, and the plan
that carries them. A site's state and the phase are each the first answer of an ordered
chain of named checks; a check answers None to pass the question on."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from fogline.rollout.memory import Phase
from fogline.rollout.messages import short_digest, site_names_text
from fogline.rollout.observations import SiteObservation
from fogline.rollout.plan import RolloutCounts, RolloutPlan, SiteState, SiteStatus
from fogline.rollout.sites import converged, needs_replacement
from fogline.rollout.state import PlanInputs, Progress

Answer = tuple[SiteState, str]
Verdict = tuple[Phase, str]


@dataclass(frozen=True)
class SiteView:
    """One site as the state checks see it. ``wave`` and ``converging`` are the wave's and
    the converging sites as sets: a list lookup per site made status quadratic in sites."""

    inputs: PlanInputs
    progress: Progress
    site: SiteObservation
    digest: str | None
    wave: AbstractSet[str]
    converging: AbstractSet[str]


def held(view: SiteView) -> Answer | None:
    if view.site.paused:
        return "Paused", "listed in spec.rollout.pausedSites"
    if view.site.maintenance:
        return "Paused", "in maintenance (a node has fogline.io/maintenance=true)"
    return None


def unreachable(view: SiteView) -> Answer | None:
    if view.site.reachable:
        return None
    if view.inputs.policy.disconnected == "Wait" and view.site.name in view.wave:
        return "Unreachable", "every node NotReady; the wave waits for it"
    return "Unreachable", "every node NotReady; it converges when it returns"


def failed(view: SiteView) -> Answer | None:
    """The site the rollout failed at (while it holds), a refused workload, or a failing pod
    on any digest."""
    progress, site = view.progress, view.site
    if progress.stage == "Failed" and site.name == progress.failed_site:
        return "Failed", progress.failure_message or ""
    if (blocked := site.blocked) is not None:
        return "Failed", blocked
    for node in sorted(site.nodes, key=lambda n: n.name):
        if node.ready and node.pod is not None and node.pod.failure:
            return "Failed", f"node {node.name}: pod {node.pod.failure}"
    return None


def unplaced(view: SiteView) -> Answer | None:
    return ("Pending", "no workload yet") if view.digest is None else None


def in_wave(view: SiteView) -> Answer | None:
    if view.site.name not in view.wave:
        return None
    label = view.progress.wave_label(view.inputs.policy)
    analyze = view.progress.analyze
    if analyze is not None and view.site.name in analyze.sites:
        return "Ready", f"{label}: pods Ready, metrics under analysis"
    if converged(view.site, view.inputs.target):
        return "Ready", f"{label} done"
    return "Updating", label


def converging(view: SiteView) -> Answer | None:
    if view.site.name not in view.converging:
        return None
    return "Updating", f"converging to {short_digest(view.digest)}"


def awaiting_wave(view: SiteView) -> Answer | None:
    """During a rollout, a site no wave has completed yet; after a failure that holds, a
    site left behind the target."""
    progress, name, target = view.progress, view.site.name, view.inputs.target
    if progress.stage == "Rollout" and name not in progress.completed:
        if name in progress.skipped:
            return "Skipped", "passed over while unreachable; a later wave takes it"
        return "Pending", f"waits for a wave to {short_digest(target)}"
    if progress.stage == "Failed" and view.digest != target:
        return "Pending", f"rollout held after failure at site {progress.failed_site}"
    return None


def awaiting_slot(view: SiteView) -> Answer | None:
    """Behind the digest the fleet settles on, and not admitted to converge yet."""
    progress, digest = view.progress, view.digest
    desired: str | None
    if progress.stage == "Failed":
        desired = digest
    elif progress.stage == "RolledBack":
        desired = progress.stable
    else:
        desired = view.inputs.target
    if desired is not None and (digest != desired or needs_replacement(view.site, desired)):
        return "Pending", "waits for a free slot (maxUnavailable)"
    return None


def settled(view: SiteView) -> Answer:
    """The last check answers always: pods still coming up, back on the stable digest after
    a rollback, or Ready."""
    progress, digest, name = view.progress, view.digest, view.site.name
    if digest is not None and not converged(view.site, digest):
        return "Updating", "pods coming up"
    if progress.stage == "RolledBack" and name in progress.rolled_back:
        return "RolledBack", f"back on {short_digest(digest)}"
    return "Ready", ""


# A site's state: the first check that answers, in this order.
SITE_STATE_CHECKS: tuple[Callable[[SiteView], Answer | None], ...] = (
    held,
    unreachable,
    failed,
    unplaced,
    in_wave,
    converging,
    awaiting_wave,
    awaiting_slot,
)


def site_state(view: SiteView) -> Answer:
    for check in SITE_STATE_CHECKS:
        if (answer := check(view)) is not None:
            return answer
    return settled(view)


def site_row(view: SiteView) -> SiteStatus:
    site, digest = view.site, view.digest
    state, message = site_state(view)
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


def stage_phase(inputs: PlanInputs, progress: Progress) -> Verdict | None:
    """Failed and RolledBack show whatever the sites do; then a pause, no site at all, or a
    rollout in progress."""
    if progress.stage == "Failed":
        return "Failed", progress.failure_message or "rollout failed"
    if progress.stage == "RolledBack":
        return "RolledBack", f"rolled back: {progress.failure_message}"
    if inputs.policy.paused:
        return "Paused", "spec.rollout.paused is set"
    if not inputs.sites:
        return "Pending", "no edge node matches the placement"
    if progress.stage != "Rollout":
        return None
    if progress.wave_sites:
        label = progress.wave_label(inputs.policy)
        return "Progressing", f"{label}: {site_names_text(progress.wave_sites)}"
    if progress.next_wave_not_before is not None:
        return "Progressing", "pausing between waves"
    return "Progressing", "waiting for a site that is reachable and not held"


def fleet_problems(inputs: PlanInputs) -> list[str]:
    """What keeps a completed rollout from Available, over the sites that are not held."""
    unheld = [s for s in inputs.sites.values() if not s.held]
    problems: list[str] = []
    unreachable_sites = [s.name for s in unheld if not s.reachable]
    if unreachable_sites:
        problems.append(f"unreachable sites: {site_names_text(unreachable_sites)}")
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
    return problems


def phase(inputs: PlanInputs, progress: Progress) -> Verdict:
    """The phase and ``status.message``: the stage's answer, else Degraded with the fleet's
    problems, else Available."""
    if (verdict := stage_phase(inputs, progress)) is not None:
        return verdict
    if problems := fleet_problems(inputs):
        return "Degraded", "; ".join(problems)
    return "Available", f"{short_digest(inputs.target)} on every reachable site"


def counts(inputs: PlanInputs, progress: Progress) -> RolloutCounts:
    sites, target = inputs.sites.values(), inputs.target
    nodes = [n for site in sites for n in site.nodes]
    return RolloutCounts(
        sites=len(sites),
        sites_updated=sum(1 for s in sites if all(n.runs(target) for n in s.nodes)),
        sites_ready=sum(
            1
            for s in sites
            if (d := progress.templates.get(s.name)) is not None
            and all(n.serves(d) for n in s.nodes)
        ),
        nodes=len(nodes),
        nodes_updated=sum(1 for n in nodes if n.runs(target)),
        nodes_ready=sum(1 for n in nodes if n.ready and n.pod is not None and n.pod.ready),
    )


def report(inputs: PlanInputs, progress: Progress) -> RolloutPlan:
    """The plan for the controller, with the memory to persist."""
    wave, converging_sites = set(progress.wave_sites), set(progress.converging)
    rows = tuple(
        site_row(
            SiteView(inputs, progress, site, progress.templates.get(name), wave, converging_sites)
        )
        for name, site in inputs.sites.items()
    )
    plan_phase, message = phase(inputs, progress)
    memory = progress.remember(inputs.target, plan_phase)
    replacements = progress.replacements
    return RolloutPlan(
        site_digests=dict(memory.site_digests),
        replace_pods_on=tuple(node for site in sorted(replacements) for node in replacements[site]),
        memory=memory,
        phase=plan_phase,
        sites=rows,
        events=progress.events,
        requeue_after=min(progress.requeue) if progress.requeue else None,
        counts=counts(inputs, progress),
        message=message,
        analyze=progress.analyze,
    )
