"""The wave analysis verdict: figures from counter readings (error ratio, p99 by
Prometheus' histogram_quantile, relative p99, a custom ratio) and the verdict against the
thresholds; unreachable or too little is never a pass."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogline.api.edgedeployment import AnalysisSpec, CustomRatio
from fogline.controllers.analysis import parse_exposition
from fogline.rollout.analysis import Counters, PodWindow, histogram_quantile, increase, judge, merge
from fogline.settings import OperatorSettings, SettingsError
from fogline.workloads.server.metrics import LATENCY_BUCKETS, ServerMetrics

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BOUNDS = (*LATENCY_BUCKETS, math.inf)


def histogram(latencies: dict[float, int]) -> tuple[tuple[float, float], ...]:
    """Cumulative buckets for `count` requests observed at each latency (seconds)."""
    return tuple(
        (bound, float(sum(n for seconds, n in latencies.items() if seconds <= bound)))
        for bound in BOUNDS
    )


def served(requests: int, errors: int = 0, seconds: float = 0.004) -> Counters:
    return Counters(float(requests), float(errors), histogram({seconds: requests}))


def pod(
    name: str,
    site: str,
    counters: Counters | None,
    baseline: bool = False,
    since: datetime | None = T0,
) -> PodWindow:
    return PodWindow(name, site, baseline, since, counters, None if counters else "refused")


AFTER = T0 + timedelta(seconds=31)


def test_p99_interpolates_inside_the_bucket_like_histogram_quantile() -> None:
    # 100 requests: 50 at or below 10 ms, 50 in (10 ms, 25 ms]. Rank 99 lies 49/50 of the
    # way through the second bucket: 10 + 15 * 49/50 = 24.7 ms (what Prometheus answers).
    buckets = ((0.01, 50.0), (0.025, 100.0), (math.inf, 100.0))
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.0247)
    # The first bucket starts at 0.
    assert histogram_quantile(0.5, ((0.01, 100.0), (math.inf, 100.0))) == pytest.approx(0.005)


def test_a_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    buckets = ((0.01, 1.0), (10.0, 1.0), (math.inf, 100.0))
    assert histogram_quantile(0.99, buckets) == 10.0


def test_an_empty_histogram_has_no_quantile() -> None:
    assert histogram_quantile(0.99, ((0.01, 0.0), (math.inf, 0.0))) is None
    assert histogram_quantile(0.99, ()) is None


def test_the_server_buckets_resolve_latencies_from_a_millisecond_to_seconds() -> None:
    for seconds in (0.001, 0.004, 0.05, 0.3, 2.0, 4.5):
        p99 = histogram_quantile(0.99, histogram({seconds: 100}))
        assert p99 is not None
        # Within the bucket that holds it: at most its bound, more than the one below.
        upper = min(b for b in BOUNDS if b >= seconds)
        lower = max((b for b in BOUNDS if b < seconds), default=0.0)
        assert lower < p99 <= upper
        assert upper <= max(2.5 * seconds, 0.001), "a bucket too coarse for this latency"


def test_increase_subtracts_and_takes_a_restart_as_a_fresh_count() -> None:
    start, end = served(10, 1), served(30, 4)
    grown = increase(start, end)
    assert (grown.requests, grown.errors) == (20.0, 3.0)
    assert dict(grown.buckets)[math.inf] == 20.0
    restarted = served(5)
    assert increase(start, restarted) is restarted


def test_merge_sums_buckets_by_bound() -> None:
    merged = merge([served(10, seconds=0.004), served(10, seconds=0.3)])
    assert merged.requests == 20
    assert dict(merged.buckets)[0.005] == 10
    assert dict(merged.buckets)[math.inf] == 20


def test_the_exposition_of_a_real_server_registry_parses_to_inference_counters() -> None:
    metrics = ServerMetrics()
    infer = "/v2/models/{name}/infer"
    for status, seconds in (("200", 0.003), ("200", 0.004), ("500", 0.2)):
        metrics.requests.labels(infer, "POST", status).inc()
        metrics.request_seconds.labels(infer).observe(seconds)
    # Not inference: the health probe and the scrape itself do not count.
    metrics.requests.labels("/v2/health/ready", "GET", "503").inc()
    metrics.request_seconds.labels("/v2/health/ready").observe(5.0)
    metrics.queue_rejected.inc(2)
    counters = parse_exposition(
        metrics.render().decode(), ("fogline_inference_queue_rejected_total",)
    )
    assert (counters.requests, counters.errors) == (3.0, 1.0)
    assert dict(counters.buckets)[0.005] == 2.0
    assert dict(counters.buckets)[math.inf] == 3.0
    assert counters.custom == {"fogline_inference_queue_rejected_total": 2.0}


def test_a_wave_within_every_threshold_passes() -> None:
    policy = AnalysisSpec(max_error_ratio=0.05, max_p99_latency_ms=50, max_p99_latency_ratio=1.5)
    verdict = judge(
        policy,
        [
            pod("a-1", "a", served(100, 1)),
            pod("b-1", "b", served(100, 0), baseline=True),
        ],
        T0,
        AFTER,
    )
    assert verdict.phase == "Passed", verdict.message
    assert {r.metric: r.passed for r in verdict.results} == {
        "errorRatio": True,
        "p99LatencyMs": True,
        "p99LatencyRatio": True,
    }
    assert verdict.requests == 100


def test_the_window_stays_open_until_window_seconds_after_the_latest_start() -> None:
    policy = AnalysisSpec(max_error_ratio=0.05)
    late = T0 + timedelta(seconds=20)
    windows = [pod("a-1", "a", served(100)), pod("a-2", "a", served(100), since=late)]
    assert judge(policy, windows, T0, AFTER).phase == "Running"
    assert judge(policy, windows, T0, late + timedelta(seconds=30)).phase == "Passed"


def test_errors_over_the_ratio_fail_the_wave_naming_site_value_and_threshold() -> None:
    policy = AnalysisSpec(max_error_ratio=0.05)
    verdict = judge(
        policy, [pod("a-1", "a", served(100, 2)), pod("b-1", "b", served(100, 40))], T0, AFTER
    )
    assert verdict.phase == "Failed"
    assert verdict.failure is not None
    assert (verdict.failure.site, verdict.failure.metric) == ("b", "errorRatio")
    assert verdict.failure.value == pytest.approx(0.4)
    assert verdict.failure.threshold == 0.05
    assert "site b: errorRatio 0.4 > 0.05" in verdict.message


def test_a_slower_wave_fails_the_relative_p99_against_the_baseline() -> None:
    policy = AnalysisSpec(max_p99_latency_ratio=1.2)
    verdict = judge(
        policy,
        [
            pod("a-1", "a", served(100, seconds=0.3)),
            pod("c-1", "c", served(100, seconds=0.004), baseline=True),
        ],
        T0,
        AFTER,
    )
    assert verdict.phase == "Failed"
    assert verdict.failure is not None and verdict.failure.metric == "p99LatencyRatio"
    row = next(r for r in verdict.results if r.metric == "p99LatencyRatio")
    assert row.baseline == 1.0 and row.value is not None and row.value > 50


def test_too_few_requests_is_inconclusive() -> None:
    policy = AnalysisSpec(max_error_ratio=0.05, min_requests=20)
    verdict = judge(policy, [pod("a-1", "a", served(19))], T0, AFTER)
    assert verdict.phase == "Inconclusive"
    assert "19 inference request(s)" in verdict.message


def test_an_unreachable_pod_is_inconclusive_not_a_pass() -> None:
    policy = AnalysisSpec(max_error_ratio=0.05)
    verdict = judge(policy, [pod("a-1", "a", served(100)), pod("a-2", "a", None)], T0, AFTER)
    assert verdict.phase == "Inconclusive"
    assert "a-2 (refused)" in verdict.message


def test_errors_on_the_pods_that_answered_fail_the_wave_even_with_one_unread() -> None:
    policy = AnalysisSpec(max_error_ratio=0.05)
    windows = [pod("a-1", "a", served(100, 50)), pod("a-2", "a", None)]
    assert judge(policy, windows, T0, AFTER).phase == "Failed"


def test_errors_on_fewer_than_min_requests_are_inconclusive_not_a_failure() -> None:
    policy = AnalysisSpec(max_error_ratio=0.05, min_requests=20)
    verdict = judge(policy, [pod("a-1", "a", served(5, 5))], T0, AFTER)
    assert verdict.phase == "Inconclusive"
    assert "5 inference request(s)" in verdict.message


def test_no_pod_reachable_is_inconclusive_once_the_window_ends() -> None:
    policy = AnalysisSpec(max_error_ratio=0.05)
    windows = [pod("a-1", "a", None, since=None)]
    assert judge(policy, windows, T0, T0 + timedelta(seconds=5)).phase == "Running"
    verdict = judge(policy, windows, T0, AFTER)
    assert verdict.phase == "Inconclusive"
    assert verdict.message == "metrics not read from a-1 (refused)"


def test_a_relative_threshold_without_any_baseline_site_is_not_judged() -> None:
    policy = AnalysisSpec(max_p99_latency_ratio=1.2)
    verdict = judge(policy, [pod("a-1", "a", served(100, seconds=2.0))], T0, AFTER)
    assert verdict.phase == "Passed"
    assert verdict.results[0].message == "no site left on the stable digest"


def test_a_baseline_that_cannot_be_read_leaves_the_relative_threshold_inconclusive() -> None:
    policy = AnalysisSpec(max_p99_latency_ratio=1.2)
    verdict = judge(
        policy, [pod("a-1", "a", served(100)), pod("b-1", "b", None, baseline=True)], T0, AFTER
    )
    assert verdict.phase == "Inconclusive"


def test_a_custom_ratio_over_its_max_fails() -> None:
    policy = AnalysisSpec(custom_ratio=CustomRatio("rejected", "rej_total", "req_total", max=0.1))
    counters = Counters(100.0, 0.0, histogram({0.004: 100}), {"rej_total": 30, "req_total": 100})
    verdict = judge(policy, [pod("a-1", "a", counters)], T0, AFTER)
    assert verdict.phase == "Failed"
    assert verdict.failure is not None and verdict.failure.metric == "rejected"


# -- properties -------------------------------------------------------------------------------

counters_st = st.builds(
    lambda requests, error_share, seconds: served(requests, int(requests * error_share), seconds),
    st.integers(0, 500),
    st.floats(0, 1),
    st.sampled_from([0.001, 0.004, 0.03, 0.3, 3.0]),
)
window_st = st.builds(
    pod,
    st.sampled_from(["p1", "p2", "p3", "p4"]),
    st.sampled_from(["a", "b", "c"]),
    st.one_of(st.none(), counters_st),
    st.booleans(),
    st.sampled_from([T0, T0 + timedelta(seconds=10), None]),
)
policy_st = st.builds(
    AnalysisSpec,
    window_seconds=st.sampled_from([5.0, 30.0]),
    min_requests=st.integers(1, 300),
    max_error_ratio=st.one_of(st.none(), st.floats(0, 1)),
    max_p99_latency_ms=st.one_of(st.none(), st.sampled_from([2.0, 20.0, 500.0])),
    max_p99_latency_ratio=st.one_of(st.none(), st.sampled_from([1.0, 1.2, 3.0])),
)


@settings(max_examples=300, deadline=None)
@given(policy_st, st.lists(window_st, max_size=6), st.integers(0, 60))
def test_a_pass_always_has_min_requests_and_every_pod_read(
    policy: AnalysisSpec, windows: list[PodWindow], seconds: int
) -> None:
    verdict = judge(policy, windows, T0, T0 + timedelta(seconds=seconds))
    if verdict.phase == "Passed":
        wave = [w for w in windows if not w.baseline]
        assert wave
        assert all(w.read for w in wave)
        if policy.max_p99_latency_ratio is not None:
            assert all(w.read for w in windows)
        assert verdict.requests >= policy.min_requests
        assert sum(w.counters.requests for w in wave if w.counters) >= policy.min_requests
        assert all(r.passed for r in verdict.results)
        assert (T0 + timedelta(seconds=seconds) - verdict.started_at).total_seconds() >= (
            policy.window_seconds
        )


@settings(max_examples=300, deadline=None)
@given(policy_st, st.lists(window_st, max_size=6), st.integers(0, 60))
def test_a_failure_names_the_site_furthest_over_a_broken_threshold(
    policy: AnalysisSpec, windows: list[PodWindow], seconds: int
) -> None:
    verdict = judge(policy, windows, T0, T0 + timedelta(seconds=seconds))
    if verdict.phase != "Failed":
        return
    failure = verdict.failure
    assert failure is not None
    assert failure.value > failure.threshold
    assert failure.site in {w.site for w in windows if not w.baseline and w.read}
    row = next(r for r in verdict.results if r.metric == failure.metric)
    assert not row.passed
    assert row.value is not None and row.value >= failure.value
    over = failure.value / failure.threshold if failure.threshold else math.inf
    for other in verdict.results:
        if other.value is not None and other.value > other.threshold and other.threshold:
            assert other.value / other.threshold <= over


# -- the operator settings that name a Prometheus -------------------------------------------


def test_only_an_http_url_is_taken_for_the_prometheus_setting() -> None:
    env = {"FOGLINE_ANALYSIS_PROMETHEUS_URL": "https://prometheus.monitoring:9090/"}
    assert OperatorSettings.from_env(env).analysis_prometheus_url == (
        "https://prometheus.monitoring:9090"
    )
    assert OperatorSettings.from_env({}).analysis_prometheus_url is None
    for bad in ("file:///etc/passwd", "prometheus:9090", "https:///x"):
        with pytest.raises(SettingsError, match="FOGLINE_ANALYSIS_PROMETHEUS_URL"):
            OperatorSettings.from_env({"FOGLINE_ANALYSIS_PROMETHEUS_URL": bad})
