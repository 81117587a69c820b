"""The verdict of a wave's metrics analysis: what the wave's servers (and the baseline's, the
sites still on the stable digest) answered in the window, judged against
``spec.rollout.analysis``. Pure: counter readings in, a verdict out; reading the servers is
a source's job (controllers/analysis.py), and what a verdict does to the rollout is the
planner's.

How the figures are computed, per site of the wave (docs/rollout.md has a worked example):

- requests: the increase of the inference endpoint's request counter over the window;
  errors: the part of it answered with a 5xx status. errorRatio = errors / requests.
- p99LatencyMs: the 0.99 quantile of the increase of the latency histogram's buckets,
  interpolated linearly inside the bucket that holds it, as Prometheus' histogram_quantile
  does (a quantile in the +Inf bucket is the highest finite bound).
- p99LatencyRatio: the site's p99 over the p99 of every sampled baseline pod together.
- a custom ratio: increase of the numerator counter over the denominator's.

A counter that is lower at the end than at the start belongs to a process that restarted in
the window; as in Prometheus' increase(), its value at the end is then the increase.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from fogline.api.edgedeployment import AnalysisPhase as VerdictPhase
from fogline.api.edgedeployment import AnalysisSpec, CustomRatio

ERROR_RATIO = "errorRatio"
P99_LATENCY_MS = "p99LatencyMs"
P99_LATENCY_RATIO = "p99LatencyRatio"
QUANTILE = 0.99
THRESHOLD_FIELDS = {
    ERROR_RATIO: "maxErrorRatio",
    P99_LATENCY_MS: "maxP99LatencyMs",
    P99_LATENCY_RATIO: "maxP99LatencyRatio",
}
GateDecision = Literal["Pass", "Fail", "Wait"]


@dataclass(frozen=True)
class Counters:
    """One server's inference counters: cumulative at one moment (a scrape), or their
    increase over a window (``increase``, or what a Prometheus query answers).

    ``buckets`` are the latency histogram's cumulative buckets as (upper bound in seconds,
    count), ascending, the last one ``math.inf``; ``custom`` maps counter sample names to
    their value summed over labels.
    """

    requests: float = 0.0
    errors: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()
    custom: Mapping[str, float] = field(default_factory=dict)


def increase(start: Counters, end: Counters) -> Counters:
    """What the counters grew by from ``start`` to ``end``. A process that restarted in
    between has counters below their start: then ``end`` itself is the increase (every
    counter of a process restarts together)."""
    start_buckets = dict(start.buckets)
    reset = (
        end.requests < start.requests
        or end.errors < start.errors
        or any(count < start_buckets.get(bound, 0.0) for bound, count in end.buckets)
        or any(value < start.custom.get(name, 0.0) for name, value in end.custom.items())
    )
    if reset:
        return end
    return Counters(
        requests=end.requests - start.requests,
        errors=end.errors - start.errors,
        buckets=tuple((b, count - start_buckets.get(b, 0.0)) for b, count in end.buckets),
        custom={name: v - start.custom.get(name, 0.0) for name, v in end.custom.items()},
    )


def merge(counters: Iterable[Counters]) -> Counters:
    """The sum of several servers' counters (buckets matched by upper bound)."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    custom: dict[str, float] = {}
    for c in counters:
        requests += c.requests
        errors += c.errors
        for bound, count in c.buckets:
            buckets[bound] = buckets.get(bound, 0.0) + count
        for name, value in c.custom.items():
            custom[name] = custom.get(name, 0.0) + value
    return Counters(requests, errors, tuple(sorted(buckets.items())), custom)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative histogram buckets, as Prometheus' histogram_quantile
    computes it: find the bucket holding rank ``q * total`` and interpolate linearly between
    its lower and upper bound (the first bucket's lower bound is 0). A rank in the +Inf
    bucket answers the highest finite bound. None when the histogram is empty."""
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]):
        return None
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


@dataclass(frozen=True)
class AnalysisRequest:
    """What the planner asks for while a wave waits on its analysis: the wave, its digest,
    the sites it judges and the baseline sites (those serving the stable digest)."""

    wave: int
    digest: str
    sites: tuple[str, ...]
    baseline_sites: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodTarget:
    """A pod to sample: where its server listens, its site, and whether it is a baseline
    pod (on the stable digest) or one of the wave's."""

    name: str
    site: str
    address: str
    port: int
    baseline: bool = False


@dataclass(frozen=True)
class PodWindow:
    """One sampled pod's figures over its window, as a source reports them.

    ``since``: when this pod's window began (a source that had to take a fresh start reading
    for it, after an operator restart or a server restart, says so here); ``counters``: the
    increase since then, None when the pod could not be read (``problem`` says why).
    """

    pod: str
    site: str
    baseline: bool
    since: datetime | None
    counters: Counters | None
    problem: str | None = None

    @property
    def read(self) -> bool:
        return self.counters is not None and self.since is not None


@dataclass(frozen=True)
class MetricResult:
    """One threshold and the worst site's value against it (``value`` None: not measured)."""

    metric: str
    threshold: float
    value: float | None = None
    baseline: float | None = None
    site: str | None = None
    passed: bool = False
    message: str = ""


@dataclass(frozen=True)
class AnalysisFailure:
    site: str
    metric: str
    value: float
    threshold: float

    def measure(self) -> str:
        """``errorRatio 0.4 > 0.05 (spec.rollout.analysis.maxErrorRatio)``"""
        field = THRESHOLD_FIELDS.get(self.metric, "customRatio.max")
        return (
            f"{self.metric} {_number(self.value)} > {_number(self.threshold)} "
            f"(spec.rollout.analysis.{field})"
        )

    def text(self) -> str:
        return f"site {self.site}: {self.measure()}"


@dataclass(frozen=True)
class AnalysisVerdict:
    """The analysis of one wave at one moment.

    Running: the window is still open. Passed: every threshold held, on at least
    ``min_requests`` requests, with every sampled pod read. Failed: a threshold broke
    (``failure`` names the worst site). Inconclusive: the window ended without an answer
    (``message`` says why); never a pass.
    """

    phase: VerdictPhase
    started_at: datetime
    requests: int = 0
    pods: int = 0
    baseline_pods: int = 0
    results: tuple[MetricResult, ...] = ()
    failure: AnalysisFailure | None = None
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.phase != "Running"


@dataclass(frozen=True)
class WaveAnalysis:
    """A verdict with the wave and digest it is about: what the planner is handed."""

    wave: int
    digest: str
    verdict: AnalysisVerdict


@dataclass(frozen=True)
class _Site:
    name: str
    counters: Counters

    def error_ratio(self) -> float | None:
        c = self.counters
        return c.errors / c.requests if c.requests > 0 else None

    def p99_ms(self) -> float | None:
        seconds = histogram_quantile(QUANTILE, self.counters.buckets)
        return None if seconds is None else seconds * 1000.0

    def custom(self, ratio: CustomRatio) -> float | None:
        denominator = self.counters.custom.get(ratio.denominator, 0.0)
        if denominator <= 0:
            return None
        return self.counters.custom.get(ratio.numerator, 0.0) / denominator


def judge(
    policy: AnalysisSpec, windows: Sequence[PodWindow], opened_at: datetime, now: datetime
) -> AnalysisVerdict:
    """The verdict on a wave from its sampled pods' windows (``baseline`` False) and the
    baseline's (True). ``opened_at``: when the analysis of this wave began; the window
    closes ``window_seconds`` after the latest of it and every pod's own ``since``."""
    wave = [w for w in windows if not w.baseline]
    baseline = [w for w in windows if w.baseline]
    starts = [opened_at, *(w.since for w in windows if w.since is not None)]
    started = max(starts)
    wave_read = [w for w in wave if w.read]
    requests = int(sum(w.counters.requests for w in wave_read if w.counters is not None))
    sites = _sites(wave_read)
    base = merge(w.counters for w in baseline if w.counters is not None and w.read)
    results = tuple(_results(policy, sites, base, baseline))
    running = AnalysisVerdict(
        phase="Running",
        started_at=started,
        requests=requests,
        pods=len(wave),
        baseline_pods=len(baseline),
        results=results,
    )

    def ended(
        phase: VerdictPhase, message: str, failure: AnalysisFailure | None = None
    ) -> AnalysisVerdict:
        return dataclasses.replace(running, phase=phase, message=message, failure=failure)

    left = policy.window_seconds - (now - started).total_seconds()
    if left > 0:
        return dataclasses.replace(running, message=f"window open, {math.ceil(left)}s left")
    if not wave:
        return ended("Inconclusive", "no pod of the wave to sample")
    # What the pods that answered show can fail a wave (given enough requests); it can
    # never pass one while a sampled pod did not answer.
    failure = _worst_failure(policy, sites, base)
    if failure is not None and requests >= policy.min_requests:
        return ended("Failed", failure.text(), failure)
    unread = [w for w in wave + (baseline if _needs_baseline(policy) else []) if not w.read]
    if unread:
        names = ", ".join(f"{w.pod} ({w.problem or 'not read'})" for w in unread[:5])
        more = f" and {len(unread) - 5} more" if len(unread) > 5 else ""
        return ended("Inconclusive", f"metrics not read from {names}{more}")
    if requests < policy.min_requests:
        return ended(
            "Inconclusive",
            f"{requests} inference request(s) in the window, fewer than minRequests "
            f"{policy.min_requests}",
        )
    unmeasured = [r for r in results if r.value is None and not r.passed]
    if unmeasured:
        return ended("Inconclusive", "; ".join(f"{r.metric}: {r.message}" for r in unmeasured))
    return ended("Passed", f"every threshold held on {requests} request(s)")


def gate(policy: AnalysisSpec, verdict: AnalysisVerdict | None) -> GateDecision:
    """What a verdict does to its wave: Passed passes it, Failed fails it, Inconclusive
    fails it under ``inconclusive: Fail`` and otherwise waits (the progress deadline fails
    it in the end); no verdict yet, or a window still open, waits. Nothing else passes."""
    if verdict is None or verdict.phase == "Running":
        return "Wait"
    if verdict.phase == "Passed":
        return "Pass"
    if verdict.phase == "Failed" or policy.inconclusive == "Fail":
        return "Fail"
    return "Wait"


def summary_text(verdict: AnalysisVerdict) -> str:
    """``errorRatio 0.01 <= 0.05, p99LatencyMs 4.9 <= 50`` for Events and the CLI."""
    parts = []
    for r in verdict.results:
        if r.value is None:
            parts.append(f"{r.metric} not judged ({r.message})")
        else:
            sign = "<=" if r.passed else ">"
            parts.append(f"{r.metric} {_number(r.value)} {sign} {_number(r.threshold)}")
    return ", ".join(parts) or "no threshold"


def _sites(windows: Sequence[PodWindow]) -> list[_Site]:
    by_site: dict[str, list[Counters]] = {}
    for w in windows:
        if w.counters is not None:
            by_site.setdefault(w.site, []).append(w.counters)
    return [_Site(name, merge(counters)) for name, counters in sorted(by_site.items())]


def _needs_baseline(policy: AnalysisSpec) -> bool:
    return policy.max_p99_latency_ratio is not None


def _figures(
    policy: AnalysisSpec, site: _Site, base: Counters
) -> list[tuple[str, float, float | None]]:
    """(metric, threshold, value) of each threshold set, for one site."""
    figures: list[tuple[str, float, float | None]] = []
    if policy.max_error_ratio is not None:
        figures.append((ERROR_RATIO, policy.max_error_ratio, site.error_ratio()))
    if policy.max_p99_latency_ms is not None:
        figures.append((P99_LATENCY_MS, policy.max_p99_latency_ms, site.p99_ms()))
    if policy.max_p99_latency_ratio is not None:
        own, theirs = site.p99_ms(), _Site("baseline", base).p99_ms()
        ratio = own / theirs if own is not None and theirs else None
        figures.append((P99_LATENCY_RATIO, policy.max_p99_latency_ratio, ratio))
    if policy.custom_ratio is not None:
        ratio_policy = policy.custom_ratio
        figures.append((ratio_policy.name, ratio_policy.max, site.custom(ratio_policy)))
    return figures


def _worst_failure(
    policy: AnalysisSpec, sites: Sequence[_Site], base: Counters
) -> AnalysisFailure | None:
    """The broken threshold furthest over its limit (value / threshold), across sites."""
    worst: tuple[float, AnalysisFailure] | None = None
    for site in sites:
        for metric, threshold, value in _figures(policy, site, base):
            if value is None or value <= threshold:
                continue
            over = value / threshold if threshold > 0 else math.inf
            if worst is None or over > worst[0]:
                worst = (over, AnalysisFailure(site.name, metric, value, threshold))
    return None if worst is None else worst[1]


def _results(
    policy: AnalysisSpec,
    sites: Sequence[_Site],
    base: Counters,
    baseline: Sequence[PodWindow],
) -> Iterable[MetricResult]:
    """One row per threshold: the worst site's value (the highest), passed when every site
    measured is within the threshold and at least one was measured."""
    rows: dict[str, list[tuple[str, float | None]]] = {}
    thresholds: dict[str, float] = {}
    for site in sites:
        for metric, threshold, value in _figures(policy, site, base):
            rows.setdefault(metric, []).append((site.name, value))
            thresholds[metric] = threshold
    if not sites:
        for metric, threshold, _ in _figures(policy, _Site("", Counters()), base):
            rows[metric], thresholds[metric] = [], threshold
    base_site = _Site("baseline", base)
    base_figures = {
        ERROR_RATIO: base_site.error_ratio(),
        P99_LATENCY_MS: base_site.p99_ms(),
        P99_LATENCY_RATIO: 1.0 if base_site.p99_ms() else None,
    }
    if policy.custom_ratio is not None:
        base_figures[policy.custom_ratio.name] = base_site.custom(policy.custom_ratio)
    for metric, values in rows.items():
        threshold = thresholds[metric]
        measured = [(name, v) for name, v in values if v is not None]
        baseline_value = base_figures.get(metric) if baseline else None
        if metric == P99_LATENCY_RATIO and not baseline:
            # The last wave (or a first deploy) leaves no site on the stable digest: there
            # is nothing to compare with, so the relative threshold is not judged.
            yield MetricResult(
                metric, threshold, passed=True, message="no site left on the stable digest"
            )
            continue
        if not measured:
            why = (
                "the baseline answered no inference request in the window"
                if metric == P99_LATENCY_RATIO
                else "no site answered a request it counts in the window"
            )
            yield MetricResult(metric, threshold, baseline=baseline_value, message=why)
            continue
        worst_site, value = max(measured, key=lambda item: item[1])
        yield MetricResult(
            metric,
            threshold,
            value=value,
            baseline=baseline_value,
            site=worst_site,
            passed=all(v <= threshold for _, v in measured),
        )


def _number(value: float) -> str:
    return f"{value:.4g}"
