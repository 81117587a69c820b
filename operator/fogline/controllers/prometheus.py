"""The rollout analysis' Prometheus source (``source: Prometheus``): the ``MetricsSource`` of
controllers/analysis.py answered from a Prometheus query API that only the operator's
settings name, never a CR. Thin I/O: one query per sample, folded into the same counters
the pod scrape source reads, judged by the pure verdict in rollout/analysis.py.

The query. One instant query of a range selector at ``now``, reaching back to the window's
opening, answers every raw sample Prometheus scraped from the sampled pods in the window::

    {__name__=~"fogline_http_requests_total|fogline_http_request_duration_seconds_bucket",
     namespace="shop", pod=~"edge-a|edge-b"}[31500ms]

Each scrape of a pod becomes one reading (``counters_of``, as a scrape of its /metrics
would), and the pod's window is the sum of the increases between consecutive readings, so a
server restart inside the window loses nothing Prometheus saw. The pod's window starts at
its first sample in the range (``PodWindow.since``); the verdict keeps the window open until
``windowSeconds`` after it.

Why raw samples and not ``increase()`` or ``histogram_quantile()`` in PromQL: ``increase``
extrapolates to the edges of the range, so 25 requests read as 27.3, and a 5xx series that
appears mid-window (prometheus_client creates a labelled series at its first use) is
extrapolated from its first sample, not counted from zero; the error ratio and the
minRequests gate would then differ from what the servers counted and from the pod scrape
source. With the raw samples both sources give the same counts, and the p99 comes from the
same buckets through the same code. The cost: the answer holds every sample of the window
(series x window / scrape interval: about 20 series per pod), bounded by
``MAX_RESPONSE_BYTES``.

Why urllib3 and not prometheus-api-client: that library pulls pandas and numpy-heavy
dataframes into the operator image for one JSON GET; the query API is a documented JSON
format of a dozen lines to read, and urllib3 (already what the Kubernetes client and the
fetch step use) gives pooled connections, timeouts, TLS with a CA bundle and no retries of
its own (the next reconcile is the retry, so the count of requests stays bounded).

Prometheus unreachable, slow, answering an error or a body that is not the query API's:
every pod of the sample gets ``counters=None`` and the ``problem``, so the verdict is
inconclusive, never a pass.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3

from fogline.controllers.analysis import (
    LATENCY_BUCKET_SAMPLE,
    REQUESTS_SAMPLE,
    AnalysisWindow,
    counters_of,
)
from fogline.rollout.analysis import Counters, PodTarget, PodWindow, increase, merge
from fogline.settings import OperatorSettings

QUERY_PATH = "/api/v1/query"
# One query answers every pod of a sample, whatever their number.
QUERIES_PER_SAMPLE = 1
# A window of 10 pods at a 15 s scrape interval holds about 10 x 20 x 40 = 8,000 samples a
# 10-minute window (under 1 MiB of JSON); 16 MiB is far past any window the verdict needs.
MAX_RESPONSE_BYTES = 16 << 20
MIN_INTERVAL_SECONDS = 5.0

Sample = tuple[str, Mapping[str, str], float]


@dataclass(frozen=True)
class _Answer:
    at: datetime
    targets: tuple[PodTarget, ...]
    windows: list[PodWindow]


class PrometheusSource:
    """``MetricsSource`` that reads Prometheus' query API (see the module docstring).

    ``requests`` counts the HTTP requests made (at most ``QUERIES_PER_SAMPLE`` per
    ``sample``, none when the last answer for the same analysis and pods is younger than
    ``min_interval_seconds``); ``on_request`` is told each one's outcome (``ok``, ``error``,
    ``timeout``).
    """

    def __init__(
        self,
        url: str,
        *,
        ca_bundle: str | None = None,
        bearer_token_file: str | None = None,
        pod_label: str = "pod",
        namespace_label: str = "namespace",
        timeout_seconds: float = 5.0,
        min_interval_seconds: float = MIN_INTERVAL_SECONDS,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        on_request: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.bearer_token_file = bearer_token_file
        self.pod_label = pod_label
        self.namespace_label = namespace_label
        self.timeout_seconds = timeout_seconds
        self.min_interval_seconds = min_interval_seconds
        self.max_response_bytes = max_response_bytes
        self.on_request = on_request
        self.requests = 0
        self._answers: dict[tuple[str, str, int, str], _Answer] = {}
        self._pool = urllib3.PoolManager(
            num_pools=1,
            maxsize=2,
            retries=False,
            timeout=urllib3.Timeout(total=timeout_seconds),
            ca_certs=ca_bundle,
        )

    @classmethod
    def from_settings(
        cls, settings: OperatorSettings, on_request: Callable[[str], None] | None = None
    ) -> PrometheusSource | None:
        """The source the settings configure; None when they name no Prometheus."""
        if settings.analysis_prometheus_url is None:
            return None
        return cls(
            settings.analysis_prometheus_url,
            ca_bundle=settings.analysis_prometheus_ca_bundle,
            bearer_token_file=settings.analysis_prometheus_bearer_token_file,
            pod_label=settings.analysis_prometheus_pod_label,
            namespace_label=settings.analysis_prometheus_namespace_label,
            timeout_seconds=settings.analysis_prometheus_timeout_seconds,
            on_request=on_request,
        )

    async def close(self) -> None:
        self._pool.clear()

    def forget(self, key: tuple[str, str, int, str]) -> None:
        self._answers.pop(key, None)

    async def sample(self, window: AnalysisWindow, now: datetime) -> list[PodWindow]:
        last = self._answers.get(window.key)
        if (
            last is not None
            and last.targets == window.targets
            and (now - last.at).total_seconds() < self.min_interval_seconds
        ):
            return last.windows
        if not window.targets:
            return []
        query = self.query(window, now)
        matrix, problem = await asyncio.to_thread(self._query, query, now)
        if matrix is None:
            windows = [_unread(t, problem) for t in window.targets]
        else:
            windows = self._windows(window, matrix)
        self._answers[window.key] = _Answer(now, window.targets, windows)
        return windows

    def query(self, window: AnalysisWindow, now: datetime) -> str:
        """The PromQL of one sample: every raw sample of the pods' counters in the window."""
        names = [REQUESTS_SAMPLE, LATENCY_BUCKET_SAMPLE, *window.counters]
        pods = sorted({t.name for t in window.targets})
        matchers = ", ".join(
            (
                f"__name__=~{_string(_alternatives(names))}",
                f"{self.namespace_label}={_string(window.namespace)}",
                f"{self.pod_label}=~{_string(_alternatives(pods))}",
            )
        )
        # The range reaches back to the opening, never before it (whole milliseconds, at
        # least one): a sample from before the analysis opened never starts a window.
        reach = max(1, math.floor((now - window.opened_at).total_seconds() * 1000))
        return f"{{{matchers}}}[{reach}ms]"

    def _query(self, query: str, now: datetime) -> tuple[list[Any] | None, str]:
        """POST the instant query (a form body, which Prometheus accepts, so that many pod
        names never make a URL too long). (matrix, "") or (None, the problem)."""
        url = self.url + QUERY_PATH
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        if self.bearer_token_file is not None:
            try:
                with open(self.bearer_token_file, encoding="utf-8") as token:
                    headers["Authorization"] = f"Bearer {token.read().strip()}"
            except OSError as err:
                return None, (
                    f"cannot read the Prometheus bearer token file {self.bearer_token_file}: "
                    f"{err.strerror or err}"
                )
        fields = {
            "query": query,
            "time": f"{now.timestamp():.3f}",
            # Prometheus gives up evaluating when the operator would stop waiting.
            "timeout": f"{self.timeout_seconds:g}",
        }
        self.requests += 1
        outcome = "error"
        try:
            response = self._pool.urlopen(
                "POST",
                url,
                body=urllib.parse.urlencode(fields),
                headers=headers,
                preload_content=False,
                redirect=False,
            )
            try:
                body = response.read(self.max_response_bytes + 1)
            finally:
                response.release_conn()
            if len(body) > self.max_response_bytes:
                return None, (
                    f"Prometheus at {self.url} answered more than {self.max_response_bytes} "
                    "bytes for the window: a shorter windowSeconds or fewer maxPods"
                )
            matrix, problem = _matrix(response.status, body)
            if matrix is not None:
                outcome = "ok"
            return matrix, f"Prometheus at {self.url}: {problem}" if problem else ""
        except urllib3.exceptions.NewConnectionError as err:  # a ConnectTimeoutError too
            return None, f"cannot reach Prometheus at {self.url}: {_reason(err)}"
        except urllib3.exceptions.TimeoutError:
            outcome = "timeout"
            return None, f"Prometheus at {self.url} gave no answer within {self.timeout_seconds:g}s"
        except urllib3.exceptions.HTTPError as err:
            return None, f"cannot reach Prometheus at {self.url}: {_reason(err)}"
        finally:
            if self.on_request is not None:
                self.on_request(outcome)

    def _windows(self, window: AnalysisWindow, matrix: list[Any]) -> list[PodWindow]:
        # pod -> target (job, instance) -> timestamp -> the samples of that scrape.
        scrapes: dict[str, dict[tuple[str, str], dict[float, list[Sample]]]] = {}
        for series in matrix:
            labels: dict[str, str] = series["metric"]
            name = labels.get("__name__", "")
            scraped_from = (labels.get("job", ""), labels.get("instance", ""))
            per_target = scrapes.setdefault(labels.get(self.pod_label, ""), {})
            for at, value in series["values"]:
                number = float(value)
                if math.isfinite(number):
                    per_target.setdefault(scraped_from, {}).setdefault(at, []).append(
                        (name, labels, number)
                    )
        windows = []
        for target in window.targets:
            read = scrapes.get(target.name)
            if not read:
                windows.append(
                    _unread(
                        target,
                        f"Prometheus at {self.url} holds no sample of "
                        f'{self.namespace_label}="{window.namespace}", '
                        f'{self.pod_label}="{target.name}" since the window opened '
                        "(is the pod scraped, with these target labels?)",
                    )
                )
                continue
            since, counters = _window_of(read.values(), window.counters)
            windows.append(
                PodWindow(
                    target.name,
                    target.site,
                    target.baseline,
                    datetime.fromtimestamp(since, UTC),
                    counters,
                )
            )
        return windows


def _window_of(
    targets: Iterable[Mapping[float, Sequence[Sample]]], counters: Sequence[str]
) -> tuple[float, Counters]:
    """A pod's window from its scrapes (per scrape target: timestamp -> samples): when it
    starts (the latest first scrape of its targets) and the sum of the increases between
    consecutive scrapes (a restart between two is a reset, as in ``increase``)."""
    since = -math.inf
    grown: list[Counters] = []
    for by_time in targets:
        readings = [counters_of(by_time[at], counters) for at in sorted(by_time)]
        since = max(since, min(by_time))
        grown.extend(increase(a, b) for a, b in itertools.pairwise(readings))
    return since, merge(grown) if grown else Counters(custom=dict.fromkeys(counters, 0.0))


def _matrix(status: int, body: bytes) -> tuple[list[Any] | None, str]:
    """The result of a query API answer that must be a matrix, or the problem."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None, f"HTTP {status}, not a query API answer (no JSON)"
    if not isinstance(answer, dict):
        return None, f"HTTP {status}, not a query API answer"
    if answer.get("status") != "success":
        kind = answer.get("errorType", "error")
        return None, f"HTTP {status}, {kind}: {str(answer.get('error', ''))[:300]}"
    data = answer.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        return None, f"HTTP {status}, not a matrix answer"
    result = data.get("result")
    valid = isinstance(result, list) and all(
        isinstance(s, dict)
        and isinstance(s.get("metric"), dict)
        and isinstance(s.get("values"), list)
        and all(isinstance(v, list) and len(v) == 2 for v in s["values"])
        for s in result
    )
    if not valid:
        return None, f"HTTP {status}, a matrix of an unexpected shape"
    return result, ""


def _unread(target: PodTarget, problem: str) -> PodWindow:
    return PodWindow(target.name, target.site, target.baseline, None, None, problem)


def _alternatives(values: Sequence[str]) -> str:
    """A PromQL (RE2) regex matching exactly these values: RE2 takes an escaped punctuation
    character as itself, which is all re.escape adds."""
    return "|".join(re.escape(v) for v in values)


def _string(value: str) -> str:
    """A PromQL string literal: Go's quoting rules, which JSON's double-quoted strings meet."""
    return json.dumps(value)


def _reason(err: urllib3.exceptions.HTTPError) -> str:
    """What failed, without urllib3's repr of its connection object."""
    return f"{type(err).__name__}: {str(err).rpartition('): ')[2]}"[:300]
