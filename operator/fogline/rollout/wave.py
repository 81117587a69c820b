"""The wave-evaluation policy: how the wave in progress reads (every site done, a site
failed, sites still updating or waited for), and what follows: the wave succeeds, fails
(rolling back or holding), or goes on under its progress deadline.

A wave's verdict is decided in one place, ``evaluate_wave``; a wave whose sites are all
Ready passes the metrics analysis gate (``gate_wave``) before ``succeed_wave``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

from fogline.rollout.analysis import AnalysisRequest, GateDecision, gate, summary_text
from fogline.rollout.messages import short_digest, site_names_text
from fogline.rollout.sites import converged, pod_failure, refused_in_wave, replacements
from fogline.rollout.state import PlanInputs, Progress


@dataclass(frozen=True)
class WaveReading:
    """What the wave's sites show now, read in wave order.

    ``passed_over``: unreachable sites under ``disconnected == "Skip"``; ``waiting``: the
    same under ``"Wait"``; ``unfinished``: reachable sites not yet serving the target on
    every Ready, unlocked node; ``failure``: the first site whose pod fails on the target or
    whose workload refuses a pod of this wave, with why. Reading stops at a failure, so the
    other lists hold only the sites before it. Held sites, and sites whose Ready nodes are
    all locked, have nothing to do and nothing to wait for: they appear nowhere.
    """

    passed_over: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    unfinished: tuple[str, ...] = ()
    failure: tuple[str, str] | None = None

    @property
    def done(self) -> bool:
        """Every site of the wave serves the target (or has nothing to do)."""
        return self.failure is None and not self.unfinished and not self.waiting


def read_wave(inputs: PlanInputs, progress: Progress) -> WaveReading:
    """Read the wave in progress against ``inputs.target``::

    s1 serving the target, s2 still coming up    -> unfinished=(s2,)
    s1 unreachable under Skip, s2 pod CrashLoop  -> passed_over=(s1,), failure=(s2, ...)
    """
    passed_over: list[str] = []
    waiting: list[str] = []
    unfinished: list[str] = []
    for name in progress.wave_sites:
        site = inputs.sites[name]
        if site.held or (site.reachable and not site.workable_nodes()):
            continue
        if not site.reachable:
            (waiting if inputs.policy.disconnected == "Wait" else passed_over).append(name)
            continue
        failure = refused_in_wave(site, progress.wave_started_at) or pod_failure(
            site, inputs.target
        )
        if failure is not None:
            return WaveReading(
                tuple(passed_over), tuple(waiting), tuple(unfinished), (name, failure)
            )
        if not converged(site, inputs.target):
            unfinished.append(name)
    return WaveReading(tuple(passed_over), tuple(waiting), tuple(unfinished))


def evaluate_wave(inputs: PlanInputs, progress: Progress) -> tuple[Progress, bool]:
    """Judge the wave in progress; True when it succeeded (a next wave may start).

    The progress deadline counts from the wave's start plus the time its clock stood still
    (paused, or waiting for a disconnected site under Wait). With
    ``progressDeadlineSeconds=600``, a wave started at 12:00:00 whose clock stood still for
    90 s fails at 12:11:30 if a site is still unfinished; until then the planner asks to be
    called again at that time.
    """
    reading = read_wave(inputs, progress)
    progress = progress.pass_over(reading.passed_over)
    if reading.failure is not None:
        return fail_wave(inputs, progress, *reading.failure), False
    analysing: str | None = None
    if reading.done:
        progress, decision, analysing = gate_wave(inputs, progress)
        if decision == "Pass":
            return succeed_wave(inputs, progress), True
        if decision == "Fail":
            return progress, False
    now, policy = inputs.now, inputs.policy
    if reading.waiting or progress.paused:
        progress = progress.stop_clock(now)
    else:
        progress = progress.resume_clock(now)
    if progress.clock_stopped_at is None and progress.wave_started_at is not None:
        budget = policy.progress_deadline_seconds + progress.wave_stopped_seconds
        deadline = progress.wave_started_at + timedelta(seconds=budget)
        if now >= deadline and analysing is not None and progress.analyze is not None:
            reason = (
                f"analysis {analysing} within {policy.progress_deadline_seconds:g}s "
                "(progressDeadlineSeconds)"
            )
            analysed = progress.analyze.sites[0]
            return fail_wave(inputs, replace(progress, analyze=None), analysed, reason), False
        if now >= deadline:
            site = inputs.sites[reading.unfinished[0]]
            nodes = site.workable_nodes()
            serving = sum(1 for n in nodes if n.serves(inputs.target))
            reason = (
                f"{len(nodes) - serving} of {len(nodes)} nodes not Ready on "
                f"{short_digest(inputs.target)} within "
                f"{policy.progress_deadline_seconds:g}s (progressDeadlineSeconds)"
            )
            return fail_wave(inputs, progress, site.name, reason), False
        progress = progress.requeue_in((deadline - now).total_seconds())
    moving = {name: replacements(inputs.sites[name], inputs.target) for name in reading.unfinished}
    return progress.with_replacements(moving), False


def gate_wave(inputs: PlanInputs, progress: Progress) -> tuple[Progress, GateDecision, str | None]:
    """The analysis gate of a wave whose sites all serve the target (``policy.analysis``;
    without it, or with no site of the wave to judge, the wave passes as it always did).

    The verdict counts only when it is about this wave and target (``inputs.analysis``):
    Passed passes (Event AnalysisPassed); Failed fails the wave at the site that broke the
    threshold, naming metric, value and threshold (Event AnalysisFailed); Inconclusive
    fails it under ``inconclusive: Fail`` and otherwise waits, as does an open window or
    no verdict yet. While it waits, ``progress.analyze`` asks for the analysis: the wave's
    sites to judge and the baseline, the sites serving the stable digest. Returns what to
    wait for with "Wait" (for the progress deadline's message)."""
    policy, sites, target = inputs.policy.analysis, inputs.sites, inputs.target
    judged = tuple(
        name
        for name in progress.wave_sites
        if not sites[name].held and sites[name].reachable and sites[name].workable_nodes()
    )
    if policy is None or not judged:
        return progress, "Pass", None
    wave, stable = set(progress.wave_sites), progress.stable
    baseline = tuple(
        name
        for name, site in sites.items()
        if name not in wave
        and stable is not None
        and stable != target
        and progress.templates.get(name) == stable
        and not site.held
        and site.reachable
        and site.workable_nodes()
        and converged(site, stable)
    )
    given = inputs.analysis
    verdict = (
        given.verdict
        if given is not None and given.wave == progress.wave_index and given.digest == target
        else None
    )
    decision = gate(policy, verdict)
    label = progress.wave_label(inputs.policy)
    if decision == "Pass" and verdict is not None:
        progress = progress.emit(
            "Normal",
            "AnalysisPassed",
            f"{label}: analysis passed on {verdict.requests} request(s) from "
            f"{verdict.pods} pod(s): {summary_text(verdict)}",
        )
        return progress, "Pass", None
    if decision == "Fail" and verdict is not None:
        failure = verdict.failure
        if failure is not None:
            progress = progress.emit(
                "Warning", "AnalysisFailed", f"{label}: analysis failed at {failure.text()}"
            )
            return (
                fail_wave(inputs, progress, failure.site, f"analysis: {failure.measure()}"),
                ("Fail"),
                None,
            )
        progress = progress.emit(
            "Warning",
            "AnalysisFailed",
            f"{label}: analysis inconclusive ({verdict.message}) and "
            "spec.rollout.analysis.inconclusive is Fail",
        )
        reason = f"analysis inconclusive: {verdict.message}"
        return fail_wave(inputs, progress, judged[0], reason), "Fail", None
    progress = replace(
        progress, analyze=AnalysisRequest(progress.wave_index, target, judged, baseline)
    )
    if verdict is None:
        return progress, "Wait", "not started"
    return progress, "Wait", f"{verdict.phase.lower()}: {verdict.message}"


def succeed_wave(inputs: PlanInputs, progress: Progress) -> Progress:
    """The wave's sites that had something to do are completed; the next wave may start
    after ``pause_seconds``."""
    sites = inputs.sites
    done = [
        name
        for name in progress.wave_sites
        if not sites[name].held and sites[name].reachable and sites[name].workable_nodes()
    ]
    progress = progress.emit(
        "Normal",
        "WaveSucceeded",
        f"{progress.wave_label(inputs.policy)} is Ready on {short_digest(inputs.target)}: "
        f"{site_names_text(done) if done else 'no site left to update'}",
    )
    progress = replace(
        progress.cleared_wave(),
        completed=progress.completed.union(done),
        wave_index=progress.wave_index + 1,
    )
    if inputs.policy.pause_seconds > 0:
        pause = timedelta(seconds=inputs.policy.pause_seconds)
        progress = replace(progress, next_wave_not_before=inputs.now + pause)
    return progress


def fail_wave(inputs: PlanInputs, progress: Progress, site: str, reason: str) -> Progress:
    """The wave failed at ``site``. With ``auto_rollback`` and a stable digest other than the
    target, every site not on the stable digest converges back to it (the failed wave's
    sites first, they are already out of service); otherwise the rollout holds."""
    policy, target, sites = inputs.policy, inputs.target, inputs.sites
    message = f"site {site}: {reason}"
    wave = progress.wave_sites
    progress = progress.emit(
        "Warning", "WaveFailed", f"{progress.wave_label(policy)} failed: {message}"
    )
    progress = replace(
        progress.cleared_wave(),
        failed_site=site,
        failure_message=message,
        next_wave_not_before=None,
    )
    stable = progress.stable
    if policy.auto_rollback and stable is not None and stable != target:
        rolled_back = frozenset(name for name, d in progress.templates.items() if d != stable)
        progress = replace(
            progress,
            stage="RolledBack",
            rolled_back=rolled_back,
            converging=tuple(
                name for name in wave if not sites[name].held and sites[name].reachable
            ),
        )
        return progress.emit(
            "Warning",
            "RolledBack",
            f"returning {len(rolled_back)} site(s) to {short_digest(stable)} after {message}",
        )
    why = (
        "spec.rollout.autoRollback is off"
        if not policy.auto_rollback
        else "there is no earlier digest to return to"
    )
    return replace(progress, stage="Failed").emit(
        "Warning",
        "RolloutFailed",
        f"rollout of {short_digest(target)} holds ({why}); sites keep what they "
        "run. Change the digest, or raise spec.rollout.retry after a fix",
    )
