"""The operator's /metrics endpoint: prometheus_client's exposition of reconciles (counted
and timed in a histogram), the work queue, API requests, Events and the process itself,
served on loopback."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fogline.controllers.metrics import OperatorMetrics, serve_metrics

pytestmark = pytest.mark.unit


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_reconciles_are_counted_by_outcome_and_timed_in_a_histogram() -> None:
    metrics = OperatorMetrics()
    with metrics.reconciling("EdgeDeployment"):
        pass
    with pytest.raises(RuntimeError), metrics.reconciling("EdgeDeployment"):
        raise RuntimeError("conflict")
    metrics.events.labels("Warning", "WaveFailed").inc()
    metrics.api_requests.inc(7)
    got = samples(metrics.render())
    kind = ("kind", "EdgeDeployment")
    assert got[("fogline_reconciles_total", (kind, ("result", "ok")))] == 1
    assert got[("fogline_reconciles_total", (kind, ("result", "error")))] == 1
    assert got[("fogline_reconcile_duration_seconds_count", (kind,))] == 2
    assert (
        got[
            (
                "fogline_reconcile_duration_seconds_bucket",
                (("kind", "EdgeDeployment"), ("le", "+Inf")),
            )
        ]
        == 2
    )
    assert got[("fogline_events_total", (("reason", "WaveFailed"), ("type", "Warning")))] == 1
    assert got[("fogline_api_requests_total", ())] == 7


def test_the_work_queue_reports_depth_retries_and_waiting_time() -> None:
    metrics = OperatorMetrics()
    metrics.queue_depth("ModelTraining", 3)
    metrics.queue_retry("ModelTraining")
    metrics.queue_latency("ModelTraining", 0.02)
    got = samples(metrics.render())
    kind = (("kind", "ModelTraining"),)
    assert got[("fogline_workqueue_depth", kind)] == 3
    assert got[("fogline_workqueue_retries_total", kind)] == 1
    assert got[("fogline_workqueue_queue_duration_seconds_count", kind)] == 1


def test_metrics_are_served_over_http_with_process_metrics() -> None:
    metrics = OperatorMetrics()
    metrics.api_requests.inc(3)
    server = serve_metrics(metrics, "127.0.0.1", 0)
    port = server.server_port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            body = reply.read().decode()
            content_type = reply.headers["Content-Type"]
    finally:
        server.shutdown()
        server.server_close()
    got = samples(body)
    assert got[("fogline_api_requests_total", ())] == 3
    assert ("process_resident_memory_bytes", ()) in got
    assert content_type.startswith("text/plain")
