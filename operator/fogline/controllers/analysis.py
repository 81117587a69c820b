"""Where a wave's metrics come from, for the verdict in fogline.rollout.analysis.

A source implements ``MetricsSource``: given an ``AnalysisWindow`` (the pods sampled for a
wave and for its baseline, and when the analysis opened) it answers each pod's counters
over its window as ``PodWindow`` values. Two sources implement it:

- ``PodScrapeSource`` (``source: Pods``) reads each sampled server's ``/metrics`` at its
  pod IP and the server port, keeps the first reading of each pod in memory and answers
  the increase since. The operator must reach pod IPs (the API server's pod proxy refuses
  loopback pod addresses, and would put every scrape through the API server); where it
  cannot, use the Prometheus source. Bounded: at most ``SCRAPE_CONCURRENCY`` scrapes at
  once, ``SCRAPE_TIMEOUT_SECONDS`` each, ``SAMPLE_BUDGET_SECONDS`` for all of one sample,
  ``MAX_EXPOSITION_BYTES`` read, and at most one scrape per pod per
  ``min_interval_seconds`` (a reconcile that comes sooner gets the last reading again). An operator restart loses the first readings: the window starts again.
- a Prometheus query source (``source: Prometheus``) answers the same from the query API
  the operator's settings name (``analysis_prometheus_url``), each pod's ``since`` its
  first sample in the window (controllers/prometheus.py). It is registered under "Prometheus" in ``OperatorState.analysis_sources``;
  while none is, that source's analyses are inconclusive, saying why.

To plug in a source: implement ``sample`` (the increase of each target's counters since
``window.opened_at``, or since its own first reading), ``forget`` and ``close``, and add
it to ``OperatorState.analysis_sources`` at start-up under the ``source`` name it serves.

A pod that cannot be read is answered with ``counters=None`` and a ``problem``; a source
never raises for one pod's failure.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from fogline.rollout.analysis import (
    AnalysisRequest,
    AnalysisVerdict,
    Counters,
    PodTarget,
    PodWindow,
    WaveAnalysis,
    increase,
)

SCRAPE_CONCURRENCY = 4
SCRAPE_TIMEOUT_SECONDS = 2.0
# A sample holds up its EdgeDeployment's reconcile: with 2 x 50 pods that do not answer it
# would take 50 s at 4 at once. Scrapes not done by then are cut, and their pods count as
# not read (an inconclusive sample, never a pass).
SAMPLE_BUDGET_SECONDS = 8.0
# A server's whole exposition is a few kilobytes; more is not a server of ours.
MAX_EXPOSITION_BYTES = 1 << 20
REQUESTS_SAMPLE = "fogline_http_requests_total"
LATENCY_BUCKET_SAMPLE = "fogline_http_request_duration_seconds_bucket"
# The inference endpoints' templates, as the server labels them:
# /v2/models/{name}/infer and /v2/models/{name}/versions/{version}/infer.
INFER_SUFFIX = "/infer"


@dataclass(frozen=True)
class AnalysisWindow:
    """One wave's analysis as a source needs it. ``key`` tells analyses apart (namespace,
    EdgeDeployment, wave, digest); ``counters`` are the extra counter sample names the
    verdict reads (a custom ratio's)."""

    key: tuple[str, str, int, str]
    namespace: str
    opened_at: datetime
    window_seconds: float
    targets: tuple[PodTarget, ...]
    counters: tuple[str, ...] = ()


class MetricsSource(Protocol):
    """What the controller asks a metrics source; see the module docstring."""

    async def sample(self, window: AnalysisWindow, now: datetime) -> list[PodWindow]:
        """Each target's counters over its window up to ``now``, in target order."""
        ...

    def forget(self, key: tuple[str, str, int, str]) -> None:
        """The analysis ``key`` is over: drop what was kept for it."""
        ...

    async def close(self) -> None:
        """The operator stops: release connections."""
        ...


def parse_exposition(text: str, counters: Sequence[str] = ()) -> Counters:
    """The inference counters in a server's Prometheus text exposition (prometheus_client's
    parser): requests and 5xx answers of the inference endpoints, their latency buckets, and
    the ``counters`` named (each summed over its labels)."""
    samples = (
        (sample.name, sample.labels, float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    )
    return counters_of(samples, counters)


def counters_of(
    samples: Iterable[tuple[str, Mapping[str, str], float]], counters: Sequence[str] = ()
) -> Counters:
    """The inference counters in one reading of a server's samples (name, labels, value):
    what a scrape of its /metrics holds, or what Prometheus stored of one of its scrapes."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    custom = dict.fromkeys(counters, 0.0)
    for name, labels, value in samples:
        if name in custom:
            custom[name] += value
        inference = labels.get("endpoint", "").endswith(INFER_SUFFIX)
        if name == REQUESTS_SAMPLE and inference:
            requests += value
            if labels.get("status", "").startswith("5"):
                errors += value
        elif name == LATENCY_BUCKET_SAMPLE and inference:
            bound = math.inf if labels["le"] == "+Inf" else float(labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return Counters(requests, errors, tuple(sorted(buckets.items())), custom)


@dataclass(frozen=True)
class _Reading:
    at: datetime
    counters: Counters | None
    problem: str | None


class PodScrapeSource:
    """``MetricsSource`` that reads the pods' own ``/metrics`` (see the module docstring).

    ``on_scrape`` is told the outcome of every HTTP request made (``ok``, ``error``,
    ``timeout``, ``cut`` by the sample's budget): the operator counts them in
    ``fogline_analysis_scrapes``.
    """

    def __init__(
        self,
        min_interval_seconds: float = 2.0,
        timeout_seconds: float = SCRAPE_TIMEOUT_SECONDS,
        concurrency: int = SCRAPE_CONCURRENCY,
        on_scrape: Callable[[str], None] | None = None,
        budget_seconds: float = SAMPLE_BUDGET_SECONDS,
    ) -> None:
        self.min_interval_seconds = min_interval_seconds
        self.timeout_seconds = timeout_seconds
        self.concurrency = concurrency
        self.budget_seconds = budget_seconds
        self.on_scrape = on_scrape
        self.requests = 0
        # (analysis key, pod) -> the reading the pod's window starts from / the last one.
        self._first: dict[tuple[tuple[str, str, int, str], str], _Reading] = {}
        self._last: dict[tuple[tuple[str, str, int, str], str], _Reading] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def forget(self, key: tuple[str, str, int, str]) -> None:
        for kept in (self._first, self._last):
            for entry in [k for k in kept if k[0] == key]:
                del kept[entry]

    async def sample(self, window: AnalysisWindow, now: datetime) -> list[PodWindow]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_seconds),
                connector=aiohttp.TCPConnector(limit=self.concurrency),
            )
        wanted = {(window.key, t.name) for t in window.targets}
        # Pods no longer sampled (replaced, gone) are dropped with their readings.
        for kept in (self._first, self._last):
            for entry in [k for k in kept if k[0] == window.key and k not in wanted]:
                del kept[entry]
        limit = asyncio.Semaphore(self.concurrency)
        tasks = [
            asyncio.ensure_future(self._reading(window, target, now, limit))
            for target in window.targets
        ]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.budget_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        cut = _Reading(now, None, f"not read within the {self.budget_seconds:g}s a sample may take")
        readings = [
            task.result() if task.done() and not task.cancelled() else cut for task in tasks
        ]
        return [self._window(window, t, r) for t, r in zip(window.targets, readings, strict=True)]

    async def _reading(
        self, window: AnalysisWindow, target: PodTarget, now: datetime, limit: asyncio.Semaphore
    ) -> _Reading:
        entry = (window.key, target.name)
        last = self._last.get(entry)
        if last is not None and (now - last.at).total_seconds() < self.min_interval_seconds:
            return last
        async with limit:
            reading = await self._scrape(target, now, window.counters)
        self._last[entry] = reading
        return reading

    async def _scrape(self, target: PodTarget, now: datetime, counters: Sequence[str]) -> _Reading:
        assert self._session is not None
        host = f"[{target.address}]" if ":" in target.address else target.address
        url = f"http://{host}:{target.port}/metrics"
        self.requests += 1
        outcome = "error"
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    return _Reading(now, None, f"/metrics answered {response.status}")
                body = await response.content.read(MAX_EXPOSITION_BYTES + 1)
                if len(body) > MAX_EXPOSITION_BYTES:
                    return _Reading(now, None, "/metrics answered more than 1 MiB")
                parsed = parse_exposition(body.decode("utf-8", "replace"), counters)
                outcome = "ok"
                return _Reading(now, parsed, None)
        except TimeoutError:
            outcome = "timeout"
            return _Reading(now, None, f"no answer within {self.timeout_seconds:g}s")
        except asyncio.CancelledError:
            outcome = "cut"  # the sample's budget ran out
            raise
        except aiohttp.ClientError as err:
            return _Reading(now, None, f"cannot reach {url}: {type(err).__name__}")
        except ValueError as err:  # an exposition the parser refuses
            return _Reading(now, None, f"unreadable /metrics: {err}")
        finally:
            if self.on_scrape is not None:
                self.on_scrape(outcome)

    def _window(self, window: AnalysisWindow, target: PodTarget, reading: _Reading) -> PodWindow:
        entry = (window.key, target.name)
        first = self._first.get(entry)
        if reading.counters is None:
            since = first.at if first is not None else None
            return PodWindow(
                target.name, target.site, target.baseline, since, None, reading.problem
            )
        if first is None or first.counters is None:
            # The pod's first reading: its window starts here.
            self._first[entry] = first = reading
        assert first.counters is not None
        grown = increase(first.counters, reading.counters)
        if grown is reading.counters and first is not reading:
            # The server restarted since the first reading: what it counted since then is
            # in the window (what its earlier process counted after the first reading is
            # lost); later readings count from zero.
            self._first[entry] = _Reading(first.at, Counters(), None)
        return PodWindow(target.name, target.site, target.baseline, first.at, grown)


def unread(targets: Sequence[PodTarget], why: str) -> list[PodWindow]:
    """Every target as not read, for ``why`` (no source can read them)."""
    return [PodWindow(t.name, t.site, t.baseline, None, None, why) for t in targets]


@dataclass
class AnalysisRun:
    """The analysis of one wave, kept in the operator's memory while the planner asks for
    it. Lost on a restart: the next reconcile opens it again, and its window with it."""

    request: AnalysisRequest
    opened_at: datetime
    verdict: AnalysisVerdict | None = None

    def key(self, namespace: str, name: str) -> tuple[str, str, int, str]:
        return (namespace, name, self.request.wave, self.request.digest)

    def about(self, wave: int, digest: str) -> bool:
        return self.request.wave == wave and self.request.digest == digest

    def given(self) -> WaveAnalysis | None:
        """What the planner is handed: the verdict with the wave it is about."""
        if self.verdict is None:
            return None
        return WaveAnalysis(self.request.wave, self.request.digest, self.verdict)


def sample_interval(window_seconds: float) -> float:
    """How often a wave under analysis is sampled: a few readings per window, never more
    than one every 2 s (each is a scrape of up to 2 x maxPods pods) nor less than one
    every 10 s."""
    return min(10.0, max(2.0, window_seconds / 3))
