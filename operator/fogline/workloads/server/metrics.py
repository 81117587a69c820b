"""Prometheus metrics of the inference server, written in the text exposition format (0.0.4).
Counters, gauges and histograms with fixed label sets; no HTTP here, `render()` returns text."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(names: Labels, values: Labels, extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help_text: str, labels: Labels = ()) -> None:
        self.name, self.help, self.labels = name, help_text, labels
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, values: Labels = (), amount: float = 1.0) -> None:
        with self._lock:
            self._values[values] = self._values.get(values, 0.0) + amount

    def value(self, values: Labels = ()) -> float:
        return self._values.get(values, 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for values, total in sorted(self._values.items()):
            yield f"{self.name}{_label_text(self.labels, values)} {_number(total)}"


class Gauge(Counter):
    def set(self, values: Labels, value: float) -> None:
        with self._lock:
            self._values[values] = value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for values, current in sorted(self._values.items()):
            yield f"{self.name}{_label_text(self.labels, values)} {_number(current)}"


class Histogram:
    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Labels = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        self.name, self.help, self.labels, self.buckets = name, help_text, labels, buckets
        # Per label set: a count per bucket (not cumulative; summed when rendered), sum, count.
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, values: Labels, amount: float) -> None:
        index = bisect.bisect_left(self.buckets, amount)
        with self._lock:
            series = self._series.get(values)
            if series is None:
                series = ([0] * (len(self.buckets) + 1), [0.0])
                self._series[values] = series
            series[0][index] += 1
            series[1][0] += amount

    def count(self, values: Labels = ()) -> int:
        series = self._series.get(values)
        return sum(series[0]) if series else 0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        with self._lock:
            snapshot = {k: (list(v[0]), v[1][0]) for k, v in self._series.items()}
        for values, (counts, total) in sorted(snapshot.items()):
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                running += count
                label = _label_text(self.labels, values, f'le="{_number(bound)}"')
                yield f"{self.name}_bucket{label} {running}"
            plain = _label_text(self.labels, values)
            yield f"{self.name}_sum{plain} {_number(total)}"
            yield f"{self.name}_count{plain} {running}"


class ServerMetrics:
    """Every metric the server exports, created once per process."""

    def __init__(self) -> None:
        self.requests = Counter(
            "fogline_http_requests_total",
            "HTTP requests answered, by endpoint, method and status code.",
            ("endpoint", "method", "status"),
        )
        self.request_seconds = Histogram(
            "fogline_http_request_duration_seconds",
            "Time from a complete request to its response being written, by endpoint.",
            ("endpoint",),
        )
        self.inference_seconds = Histogram(
            "fogline_inference_duration_seconds",
            "Time spent in onnxruntime per run (one run may serve a merged batch).",
            ("model",),
        )
        self.batch_rows = Histogram(
            "fogline_inference_batch_rows",
            "Rows per onnxruntime run after merging concurrent requests.",
            ("model",),
            BATCH_BUCKETS,
        )
        self.load_seconds = Gauge(
            "fogline_model_load_duration_seconds",
            "Time to verify the artifact and load it into onnxruntime.",
            ("model",),
        )
        self.model_ready = Gauge(
            "fogline_model_ready", "1 when the model serves requests, else 0.", ("model",)
        )
        self.model_info = Gauge(
            "fogline_model_info",
            "The served artifact; the value is always 1.",
            ("model", "version", "digest", "file", "quantized"),
        )
        self.in_flight = Gauge(
            "fogline_http_requests_in_flight", "Requests received and not yet answered."
        )

    def render(self) -> str:
        families = (
            self.requests,
            self.request_seconds,
            self.inference_seconds,
            self.batch_rows,
            self.load_seconds,
            self.model_ready,
            self.model_info,
            self.in_flight,
        )
        lines = [line for family in families for line in family.render()]
        return "\n".join(lines) + "\n"
