"""The Prometheus text the server exports: pure rendering, no server."""

from __future__ import annotations

import pytest

from fogline.workloads.server.metrics import Histogram, ServerMetrics

pytestmark = pytest.mark.unit


def test_histogram_buckets_are_cumulative_and_end_in_inf() -> None:
    histogram = Histogram("h_seconds", "help", ("endpoint",), buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 5.0):
        histogram.observe(("/v2",), value)
    lines = list(histogram.render())
    assert 'h_seconds_bucket{endpoint="/v2",le="0.1"} 1' in lines
    assert 'h_seconds_bucket{endpoint="/v2",le="1"} 2' in lines
    assert 'h_seconds_bucket{endpoint="/v2",le="+Inf"} 3' in lines
    assert 'h_seconds_count{endpoint="/v2"} 3' in lines
    assert 'h_seconds_sum{endpoint="/v2"} 5.55' in lines


def test_info_metric_carries_the_digest_and_label_values_are_escaped() -> None:
    metrics = ServerMetrics()
    metrics.model_info.set(("m", "1", "sha256:ab", "model.onnx", "false"), 1)
    metrics.requests.inc(('/v2/"x"', "GET", "200"))
    text = metrics.render()
    assert 'fogline_model_info{model="m",version="1",digest="sha256:ab",file="model.onnx",' in text
    assert 'endpoint="/v2/\\"x\\""' in text
    assert "# TYPE fogline_http_request_duration_seconds histogram" in text
    assert text.endswith("\n")
