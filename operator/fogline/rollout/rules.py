"""The planner's rules, in the order ``plan_rollout`` chains them: start (or restart) a
rollout, track the pause, advance the rollout wave by wave, converge the fleet after
completion or a rollback, and give unplaced sites a template. Each rule is a pure function
``(PlanInputs, Progress) -> Progress``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from fogline.rollout.messages import short_digest, site_names_text
from fogline.rollout.sites import converged, needs_replacement, replacements
from fogline.rollout.state import PlanInputs, Progress
from fogline.rollout.wave import evaluate_wave

Rule = Callable[[PlanInputs, Progress], Progress]


def start_rollout(inputs: PlanInputs, progress: Progress) -> Progress:
    """A new target, or ``policy.retry`` raised above ``retry_observed`` after a failure,
    starts a rollout from wave 0. Sites caught mid-update (an interrupted wave) stay in
    ``converging``: the first wave takes them first, so that they never add to what a wave
    takes down."""
    memory, policy, target = inputs.memory, inputs.policy, inputs.target
    changed = memory.target_digest != target
    retry = memory.stage in ("RolledBack", "Failed") and policy.retry > memory.retry_observed
    progress = replace(progress, retry_observed=max(memory.retry_observed, policy.retry))
    if not (changed or retry):
        return progress
    if not changed:
        progress = progress.emit(
            "Normal",
            "RolloutRetried",
            f"spec.rollout.retry is {policy.retry}: rolling out "
            f"{short_digest(target)} again from wave 0",
        )
    elif progress.stable is None:
        progress = progress.emit(
            "Normal",
            "RolloutStarted",
            f"first deploy of {short_digest(target)} to every eligible site",
        )
    else:
        progress = progress.emit(
            "Normal",
            "RolloutStarted",
            f"rolling out {short_digest(target)} to replace "
            f"{short_digest(progress.stable)}, canary first",
        )
    previous = memory.target_digest
    moving = [
        name
        for name in progress.wave_sites
        if previous is not None and not converged(inputs.sites[name], previous)
    ]
    return replace(
        progress.cleared_wave(),
        converging=tuple(dict.fromkeys([*progress.converging, *moving])),
        stage="Rollout",
        wave_index=0,
        next_wave_not_before=None,
        completed=frozenset(),
        skipped=frozenset(),
        rolled_back=frozenset(),
        failed_site=None,
        failure_message=None,
    )


def track_pause(inputs: PlanInputs, progress: Progress) -> Progress:
    """``policy.paused`` stops the wave's deadline clock; setting and clearing it are
    Events."""
    paused, was_paused = inputs.policy.paused, inputs.memory.paused
    if paused:
        if not was_paused:
            progress = progress.emit(
                "Normal",
                "RolloutPaused",
                "spec.rollout.paused is set: no pod is replaced and no wave starts "
                "until it is cleared",
            )
        if progress.wave_sites:
            progress = progress.stop_clock(inputs.now)
    elif was_paused:
        progress = progress.emit("Normal", "RolloutResumed", "spec.rollout.paused was cleared")
    return replace(progress, paused=paused)


def advance_rollout(inputs: PlanInputs, progress: Progress) -> Progress:
    """During a rollout (and not paused), finish the wave in progress and start the next,
    as far as the fleet allows in this call."""
    if inputs.policy.paused or progress.stage != "Rollout":
        return progress
    # Each turn finishes or starts one wave; a wave takes at least one pending site,
    # so twice the number of sites (plus slack) bounds the turns.
    for _ in range(2 * len(inputs.sites) + 4):
        if progress.wave_sites:
            progress, succeeded = evaluate_wave(inputs, progress)
            if not succeeded:
                return progress
        else:
            progress, started = start_next_wave(inputs, progress)
            if not started:
                return progress
    return progress


def wave_size(inputs: PlanInputs, progress: Progress, pending: int) -> int:
    """How many sites the next wave takes::

    no stable digest (first deploy), 8 pending sites -> 8
    wave 0 with canary_sites=2                       -> 2
    a later wave, maxUnavailable="25%", 8 eligible   -> W = 2
    """
    if progress.stable is None:
        return pending
    if progress.wave_index == 0 and inputs.policy.canary_sites > 0:
        return inputs.policy.canary_sites
    return inputs.width()


def start_next_wave(inputs: PlanInputs, progress: Progress) -> tuple[Progress, bool]:
    """Start the next wave; False when waiting for the pause or the rollout completed."""
    sites, policy, target, now = inputs.sites, inputs.policy, inputs.target, inputs.now
    pending = [
        name for name, site in sites.items() if not site.held and name not in progress.completed
    ]
    # Sites that already serve the target need no wave (for example after the target
    # went back to a digest they still run).
    serving = [
        name for name in pending if sites[name].workable_nodes() and converged(sites[name], target)
    ]
    progress = replace(
        progress.with_templates(serving, target), completed=progress.completed.union(serving)
    )
    pending = [name for name in pending if name not in progress.completed]
    if policy.disconnected == "Skip":
        progress = progress.pass_over(name for name in pending if not sites[name].reachable)
    # A reachable site whose Ready nodes are all locked has nothing to update now; it
    # follows after completion, like a site that was skipped.
    pending = [
        name
        for name in pending
        if sites[name].workable_nodes()
        or (not sites[name].reachable and policy.disconnected == "Wait")
    ]
    if not pending:
        # A digest that no site has run yet is not proven: with every remaining site
        # unreachable or held, or no site at all, wait for one instead of calling it
        # stable (a rollout to no node is no revision and no RolloutComplete).
        if progress.completed:
            progress = complete(inputs, progress)
        return progress, False
    if progress.next_wave_not_before is not None and now < progress.next_wave_not_before:
        return progress.requeue_in((progress.next_wave_not_before - now).total_seconds()), False
    size = wave_size(inputs, progress, len(pending))
    pending_set = set(pending)
    carried = [name for name in progress.converging if name in pending_set]
    carried_set = set(carried)
    fresh = [name for name in pending if name not in carried_set]
    chosen = carried + fresh[: max(0, size - len(carried))]
    progress = replace(
        progress.with_templates(chosen, target),
        converging=(),
        skipped=progress.skipped.difference(chosen),
        wave_sites=tuple(chosen),
        wave_started_at=now,
        wave_stopped_seconds=0.0,
        clock_stopped_at=None,
        next_wave_not_before=None,
    )
    progress = progress.emit(
        "Normal",
        "WaveStarted",
        f"{progress.wave_label(policy)}: updating {site_names_text(chosen)} "
        f"to {short_digest(target)}",
    )
    return progress, True


def complete(inputs: PlanInputs, progress: Progress) -> Progress:
    """The target becomes the stable digest."""
    progress = replace(
        progress.cleared_wave(),
        stage="Complete",
        stable=inputs.target,
        next_wave_not_before=None,
    )
    skipped = len(progress.skipped)
    note = f"; {skipped} unreachable site(s) follow when they return" if skipped else ""
    return progress.emit(
        "Normal",
        "RolloutComplete",
        f"{short_digest(inputs.target)} is the current digest on "
        f"{len(progress.completed)} site(s){note}",
    )


def converge_fleet(inputs: PlanInputs, progress: Progress) -> Progress:
    """After completion the fleet converges to the target; during a rollback, to the
    stable digest. Not while paused."""
    if inputs.policy.paused:
        return progress
    if progress.stage == "Complete":
        return converge(inputs, progress, inputs.target)
    if progress.stage == "RolledBack" and progress.stable is not None:
        return converge(inputs, progress, progress.stable)
    return progress


def converge(inputs: PlanInputs, progress: Progress, digest: str) -> Progress:
    """Bring every reachable, unheld site to ``digest``, at most W sites at a time::

    W=2, s1 converging, s2..s4 behind      -> s1 and s2 converge, s3 and s4 wait
    next call, s1 serves ``digest``        -> s2 and s3 converge
    """
    sites, width = inputs.sites, inputs.width()
    converging = [
        name
        for name in progress.converging
        if not sites[name].held
        and sites[name].reachable
        # A site whose new pods fail keeps its slot: a digest that fails on the sites
        # it converges never takes down more than W of them.
        and not converged(sites[name], digest)
    ]
    admitted = set(converging)
    for name, site in sites.items():
        if (
            not site.held
            and site.reachable
            and name not in admitted
            and len(converging) < width
            and needs_replacement(site, digest)
        ):
            converging.append(name)
            admitted.add(name)
    # Templates follow at once (the DaemonSets replace nothing by themselves); admission
    # limits which sites get their pods replaced.
    unheld = [name for name, site in sites.items() if not site.held]
    progress = replace(progress.with_templates(unheld, digest), converging=tuple(converging))
    return progress.with_replacements(
        {name: replacements(sites[name], digest) for name in converging}
    )


def template_unplaced_sites(inputs: PlanInputs, progress: Progress) -> Progress:
    """A site that never had a workload gets the digest the fleet runs: the stable one,
    or the target during a first deploy. It has nothing to protect. Not while paused."""
    if inputs.policy.paused:
        return progress
    digest = progress.stable
    if digest is None and progress.stage == "Rollout":
        digest = inputs.target
    if digest is None:
        return progress
    unplaced = [
        name
        for name, site in inputs.sites.items()
        if not site.held and name not in progress.templates
    ]
    return progress.with_templates(unplaced, digest)


# The chain ``plan_rollout`` runs, in this order: each rule sees what the ones before it
# decided.
RULES: tuple[Rule, ...] = (
    start_rollout,
    track_pause,
    advance_rollout,
    converge_fleet,
    template_unplaced_sites,
)
