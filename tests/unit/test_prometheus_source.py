"""The Prometheus source's pure parts: the query it sends, how a pod's scrapes become its
window (resets, series that appear mid-window), which answers it takes for a matrix, and
its operator settings."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fogline.controllers.analysis import AnalysisWindow
from fogline.controllers.prometheus import PrometheusSource, _matrix, _window_of
from fogline.rollout.analysis import PodTarget
from fogline.settings import OperatorSettings, SettingsError

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
INFER = "/v2/models/{name}/infer"


def requests(status: str, value: float) -> tuple[str, dict[str, str], float]:
    labels = {"endpoint": INFER, "method": "POST", "status": status}
    return ("fogline_http_requests_total", labels, value)


def bucket(le: str, value: float) -> tuple[str, dict[str, str], float]:
    return ("fogline_http_request_duration_seconds_bucket", {"endpoint": INFER, "le": le}, value)


def test_the_query_selects_the_pods_by_their_labels_over_the_window_since_its_opening() -> None:
    window = AnalysisWindow(
        ("shop", "digits", 0, "sha256:" + "a" * 64),
        "shop",
        T0,
        30,
        (
            PodTarget("digits-edge.s1-x", "s1", "10.0.0.1", 8000),
            PodTarget("digits-edge-s2-y", "s2", "10.0.0.2", 8000, baseline=True),
        ),
        ("my_rejected_total",),
    )
    source = PrometheusSource(
        "http://p:9090", pod_label="kubernetes_pod_name", namespace_label="kubernetes_namespace"
    )
    assert source.query(window, T0 + timedelta(seconds=31, microseconds=500)) == (
        '{__name__=~"fogline_http_requests_total|fogline_http_request_duration_seconds_bucket|'
        'my_rejected_total", kubernetes_namespace="shop", '
        'kubernetes_pod_name=~"digits\\\\-edge\\\\-s2\\\\-y|digits\\\\-edge\\\\.s1\\\\-x"}[31000ms]'
    )


def test_a_pod_window_sums_the_increases_between_scrapes_across_a_restart() -> None:
    scrapes = {
        100.0: [requests("200", 10), bucket("0.1", 10), bucket("+Inf", 10)],
        101.0: [requests("200", 15), bucket("0.1", 15), bucket("+Inf", 15)],
        # The server restarted: its counters start again from zero.
        102.0: [requests("200", 3), bucket("0.1", 3), bucket("+Inf", 3)],
        103.0: [requests("200", 7), bucket("0.1", 6), bucket("+Inf", 7)],
    }
    since, counters = _window_of([scrapes], ())
    assert since == 100.0
    assert counters.requests == 5 + 3 + 4
    assert dict(counters.buckets) == {0.1: 5 + 3 + 3, math.inf: 12}


def test_a_series_that_appears_mid_window_counts_from_zero() -> None:
    """prometheus_client creates a labelled series at its first use: the first 5xx answers
    are in the first scrape that shows the series."""
    scrapes = {
        100.0: [requests("200", 4)],
        101.0: [requests("200", 9), requests("500", 2)],
        102.0: [requests("200", 9), requests("500", 3)],
    }
    since, counters = _window_of([scrapes], ())
    assert (since, counters.requests, counters.errors) == (100.0, 8, 3)


def test_a_pod_scraped_once_has_an_empty_window_from_that_scrape() -> None:
    since, counters = _window_of([{100.0: [requests("200", 4)]}], ("custom_total",))
    assert (since, counters.requests, counters.custom) == (100.0, 0, {"custom_total": 0.0})


def test_a_pod_of_two_scrape_targets_starts_when_both_were_read() -> None:
    first = {100.0: [requests("200", 1)], 102.0: [requests("200", 3)]}
    second = {101.0: [requests("200", 5)], 103.0: [requests("200", 6)]}
    since, counters = _window_of([first, second], ())
    assert (since, counters.requests) == (101.0, 3)


MATRIX: dict[str, Any] = {
    "status": "success",
    "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1.5, "2"]]}]},
}


@pytest.mark.parametrize(
    ("status", "body", "problem"),
    [
        (200, json.dumps(MATRIX), ""),
        (200, "<html>", "HTTP 200, not a query API answer (no JSON)"),
        (200, "[]", "HTTP 200, not a query API answer"),
        (
            400,
            json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}),
            "HTTP 400, bad_data: parse error",
        ),
        (
            200,
            json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}),
            "HTTP 200, not a matrix answer",
        ),
        (
            200,
            json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [1]}}),
            "HTTP 200, a matrix of an unexpected shape",
        ),
        (
            200,
            json.dumps(
                {
                    "status": "success",
                    "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1]]}]},
                }
            ),
            "HTTP 200, a matrix of an unexpected shape",
        ),
    ],
    ids=["matrix", "html", "list", "error", "vector", "not-series", "short-pair"],
)
def test_only_a_query_api_matrix_is_taken(status: int, body: str, problem: str) -> None:
    matrix, found = _matrix(status, body.encode())
    assert found == problem
    assert (matrix is not None) == (problem == "")


def test_the_prometheus_settings_are_read_from_the_environment() -> None:
    settings = OperatorSettings.from_env(
        {
            "FOGLINE_ANALYSIS_PROMETHEUS_URL": "https://prometheus.monitoring:9090/",
            "FOGLINE_ANALYSIS_PROMETHEUS_BEARER_TOKEN_FILE": "/etc/token",
            "FOGLINE_ANALYSIS_PROMETHEUS_POD_LABEL": "kubernetes_pod_name",
            "FOGLINE_ANALYSIS_PROMETHEUS_TIMEOUT_SECONDS": "2.5",
        }
    )
    assert settings.analysis_prometheus_url == "https://prometheus.monitoring:9090"
    assert settings.analysis_prometheus_bearer_token_file == "/etc/token"
    assert settings.analysis_prometheus_pod_label == "kubernetes_pod_name"
    assert settings.analysis_prometheus_namespace_label == "namespace"
    assert settings.analysis_prometheus_timeout_seconds == 2.5
    source = PrometheusSource.from_settings(settings)
    assert source is not None and source.url == "https://prometheus.monitoring:9090"
    assert source.timeout_seconds == 2.5
    assert PrometheusSource.from_settings(OperatorSettings.from_env({})) is None


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("FOGLINE_ANALYSIS_PROMETHEUS_URL", "prometheus:9090", "not an http(s) URL"),
        ("FOGLINE_ANALYSIS_PROMETHEUS_POD_LABEL", "pod-name", "not a Prometheus target label"),
        ("FOGLINE_ANALYSIS_PROMETHEUS_NAMESPACE_LABEL", "__meta_ns", "not starting with"),
        ("FOGLINE_ANALYSIS_PROMETHEUS_TIMEOUT_SECONDS", "0", "above 0"),
        ("FOGLINE_ANALYSIS_PROMETHEUS_TIMEOUT_SECONDS", "soon", "above 0"),
    ],
)
def test_bad_prometheus_settings_name_the_variable_and_the_fix(
    name: str, value: str, said: str
) -> None:
    with pytest.raises(SettingsError, match=name) as raised:
        OperatorSettings.from_env({name: value})
    assert said in str(raised.value)
