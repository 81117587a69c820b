"""The Prometheus exposition the server exports: prometheus_client, a closed set of labels."""

from __future__ import annotations

import pytest

from fogline.workloads.server.metrics import ServerMetrics, method_label

pytestmark = pytest.mark.unit


def test_method_names_a_client_makes_up_share_one_label() -> None:
    metrics = ServerMetrics()
    for index in range(500):
        metrics.requests.labels("other", method_label(f"X{'Y' * 200}{index}"), "404").inc()
    metrics.requests.labels("/v2", method_label("GET"), "200").inc()
    text = metrics.render().decode()
    assert 'fogline_http_requests_total{endpoint="other",method="other",status="404"} 500.0' in text
    assert 'method="GET"' in text
    assert "XYY" not in text


def test_exposition_has_process_metrics_and_standard_histograms() -> None:
    metrics = ServerMetrics()
    metrics.request_seconds.labels("/v2").observe(0.0002)
    metrics.model_info.labels("m", "1", "sha256:ab", "model.onnx", "false").set(1)
    text = metrics.render().decode()
    assert 'fogline_http_request_duration_seconds_bucket{endpoint="/v2",le="+Inf"} 1.0' in text
    assert 'fogline_http_request_duration_seconds_bucket{endpoint="/v2",le="0.0001"} 0.0' in text
    assert "# TYPE fogline_http_requests_total counter" in text or "fogline_http_requests" in text
    assert 'digest="sha256:ab"' in text
    assert "process_resident_memory_bytes" in text
    assert "_created" not in text


def test_queue_depth_is_read_when_scraped() -> None:
    metrics = ServerMetrics()
    depth = [3]
    metrics.watch_queue(lambda: depth[0])
    assert "fogline_inference_queue_depth 3.0" in metrics.render().decode()
    depth[0] = 0
    assert "fogline_inference_queue_depth 0.0" in metrics.render().decode()
