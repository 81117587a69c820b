"""Prometheus metrics of the inference server through prometheus_client: one registry per server
with the process metrics (RSS, CPU, open descriptors) beside the server's own. Every label takes
its values from a closed set (route templates, known methods, the statuses this server sends),
so no client can grow the exposition. No HTTP here; `render()` returns the text."""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
# From 0.1 ms to 10 s: rollout analysis takes the p99 from these buckets, and a model
# several seconds slow must land in a finite bucket to be told from one just over 2.5 s.
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
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
OTHER = "other"

# `_created` series double the exposition and nobody here reads them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream


def method_label(method: str) -> str:
    """The method as a label value: a known one, or `other` (a client picks method names)."""
    return method if method in METHODS else OTHER


class ServerMetrics:
    """The server's metric families, registered on a registry of their own."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.requests = Counter(
            "fogline_http_requests",
            "HTTP requests answered, by endpoint, method and status code.",
            ("endpoint", "method", "status"),
            registry=registry,
        )
        self.request_seconds = Histogram(
            "fogline_http_request_duration_seconds",
            "Time from a complete request to its response being written, by endpoint.",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.refused = Counter(
            "fogline_http_refused",
            "Requests the HTTP layer refused before routing them, by status "
            "(400 malformed, 408 head too slow, 413 body too large, 414/431 too large a head).",
            ("status",),
            registry=registry,
        )
        self.connections = Gauge(
            "fogline_http_connections", "Open client connections.", registry=registry
        )
        self.connections_refused = Counter(
            "fogline_http_connections_refused",
            "Connections refused or cut, by reason: limit (over --max-connections), "
            "fd_limit (accept failed at the descriptor limit), head_timeout, write_timeout "
            "(the client stopped reading).",
            ("reason",),
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "fogline_inference_duration_seconds",
            "Time spent in onnxruntime per run (one run may serve a merged batch).",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "fogline_inference_batch_rows",
            "Rows per onnxruntime run after merging concurrent requests.",
            ("model",),
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "fogline_inference_queue_depth",
            "Requests waiting for the model (bounded by --max-queue).",
            registry=registry,
        )
        self.queue_rejected = Counter(
            "fogline_inference_queue_rejected",
            "Requests answered 503 because the inference queue was full.",
            registry=registry,
        )
        self.queue_cancelled = Counter(
            "fogline_inference_queue_cancelled",
            "Queued requests dropped before running because their client went away.",
            registry=registry,
        )
        self.load_seconds = Gauge(
            "fogline_model_load_duration_seconds",
            "Time to verify the artifact and load it into onnxruntime.",
            ("model",),
            registry=registry,
        )
        self.model_ready = Gauge(
            "fogline_model_ready",
            "1 when the model serves requests, else 0.",
            ("model",),
            registry=registry,
        )
        self.model_info = Gauge(
            "fogline_model_info",
            "The served artifact; the value is always 1.",
            ("model", "version", "digest", "file", "quantized"),
            registry=registry,
        )
        self.body_bytes = Gauge(
            "fogline_http_request_body_bytes_in_flight",
            "Request body bytes held by requests under way (--max-body-bytes-in-flight).",
            registry=registry,
        )
        self.in_flight = Gauge(
            "fogline_http_requests_in_flight",
            "Requests received and not yet answered.",
            registry=registry,
        )

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
