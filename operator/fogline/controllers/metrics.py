"""The operator's own Prometheus metrics, kept by prometheus_client in a registry of their
own: reconciles by kind and outcome, their duration as a histogram, the work queue's depth,
retries and waiting time, API requests, Events posted, and the process's own metrics (CPU,
memory, open files). Served on a port of their own: kopf's liveness server cannot carry
other routes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.reconciles = Counter(
            "fogline_reconciles",
            "Reconciles run, by kind and outcome.",
            ["kind", "result"],
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "fogline_reconcile_duration_seconds",
            "Time one reconcile took, by kind.",
            ["kind"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "fogline_events",
            "Kubernetes Events posted, by type and reason.",
            ["type", "reason"],
            registry=r,
        )
        self.api_requests = Counter(
            "fogline_api_requests", "Requests the controllers sent to the API server.", registry=r
        )
        self.api_errors = Counter(
            "fogline_api_errors",
            "API requests that failed, by HTTP status (0: no answer).",
            ["status"],
            registry=r,
        )
        self.depth = Gauge(
            "fogline_workqueue_depth",
            "Keys waiting in the work queue, by kind.",
            ["kind"],
            registry=r,
        )
        self.retries = Counter(
            "fogline_workqueue_retries",
            "Failed reconciles put back with back-off, by kind.",
            ["kind"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "fogline_workqueue_queue_duration_seconds",
            "Time a key waited in the work queue before its reconcile started, by kind.",
            ["kind"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.analysis_scrapes = Counter(
            "fogline_analysis_scrapes",
            "Requests the rollout analysis made to edge servers' /metrics, by outcome "
            "(ok, error, timeout, cut: the sample's time ran out).",
            ["outcome"],
            registry=r,
        )
        self.analysis_prometheus_queries = Counter(
            "fogline_analysis_prometheus_queries",
            "Queries the rollout analysis made to the Prometheus query API (at most one per "
            "analysis sample), by outcome (ok, error, timeout).",
            ["outcome"],
            registry=r,
        )
        self.tracked = Gauge(
            "fogline_tracked_objects",
            "Objects the operator keeps per-object memory of.",
            registry=r,
        )

    @contextlib.contextmanager
    def reconciling(self, kind: str) -> Iterator[None]:
        """Count one reconcile of `kind` and its duration; an exception counts as an error."""
        started = time.monotonic()
        result = "error"
        try:
            yield
            result = "ok"
        finally:
            self.reconciles.labels(kind, result).inc()
            self.reconcile_duration.labels(kind).observe(time.monotonic() - started)

    # The work queue's reports (fogline.controllers.workqueue.QueueMetrics).
    def queue_depth(self, kind: str, depth: int) -> None:
        self.depth.labels(kind).set(depth)

    def queue_retry(self, kind: str) -> None:
        self.retries.labels(kind).inc()

    def queue_latency(self, kind: str, seconds: float) -> None:
        self.queue_wait.labels(kind).observe(seconds)

    def render(self) -> str:
        return generate_latest(self.registry).decode()


def serve_metrics(metrics: OperatorMetrics, host: str, port: int) -> WSGIServer:
    """prometheus_client's own HTTP server, on a thread of its own; `shutdown()` stops it."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
