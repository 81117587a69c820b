"""The load generator's plan: loopback targets only, bounded rate, time and count, a fixed
schedule, Open Inference v2 bodies, a route per target or per site; and the quantiles it
reports."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fogline.devcluster.loadgen import (
    FollowingLoad,
    LoadPlan,
    Route,
    TargetResult,
    loopback_target,
)
from tests.conftest import wait_for

pytestmark = pytest.mark.unit

ROWS = ((1.0, 2.0), (3.0, 4.0))


def _plan(**changes: Any) -> LoadPlan:
    fields: dict[str, Any] = {"targets": ("http://127.9.0.5:8080",), "model": "digits"}
    fields |= {"rows": ROWS} | changes
    return LoadPlan(**fields)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://10.0.0.7:8080", "only loopback"),
        ("http://example.com:8080", "an IP address, not a name"),
        ("https://127.0.0.1:8443", "give http://ADDRESS:PORT"),
        ("http://127.0.0.1", "give http://ADDRESS:PORT"),
    ],
)
def test_targets_beyond_loopback_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loopback_target(url)
    with pytest.raises(ValueError, match=message):
        _plan(targets=(url,))


def test_a_loopback_target_is_kept_without_its_path() -> None:
    assert loopback_target("http://127.42.0.3:8080/v2") == "http://127.42.0.3:8080"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"targets": ()}, "at least one target"),
        ({"rows": ()}, "at least one row"),
        ({"rows": ((1.0,), (1.0, 2.0))}, "all of one length"),
        ({"rate": 0}, "rate"),
        ({"rate": 5000}, "rate"),
        ({"seconds": 0}, "seconds"),
        ({"seconds": 3600}, "seconds"),
        ({"max_requests": 0}, "max_requests"),
    ],
)
def test_an_unbounded_or_empty_plan_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _plan(**changes)


def test_without_routes_each_target_is_a_route_of_its_own() -> None:
    plan = _plan(targets=("http://127.9.0.5:8080", "http://127.9.0.6:8080"))
    assert plan.paced_routes() == (
        Route("http://127.9.0.5:8080", ("http://127.9.0.5:8080",)),
        Route("http://127.9.0.6:8080", ("http://127.9.0.6:8080",)),
    )


def test_routed_per_site_a_site_takes_its_targets_in_turn_and_may_have_none() -> None:
    plan = LoadPlan.by_route(
        {
            "site-01": ["http://127.9.0.5:8080", "http://127.9.0.6:8080", "http://127.9.0.5:8080"],
            "site-02": [],
        },
        "digits",
        ROWS,
        rate=4,
    )
    assert plan.targets == ("http://127.9.0.5:8080", "http://127.9.0.6:8080")
    assert plan.paced_routes() == (
        Route("site-01", ("http://127.9.0.5:8080", "http://127.9.0.6:8080")),
        Route("site-02", ()),
    )
    assert plan.rate == 4
    assert LoadPlan.by_route({"site-01": []}, "digits", ROWS).targets == ()


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ({"site-01": ["http://10.0.0.7:8080"]}, "only loopback"),
        ({"site-01": ["http://127.9.0.5:8080"], "site-02": ["http://127.9.0.5:8080"]}, "one route"),
        ({}, "at least one target"),
    ],
)
def test_routes_to_beyond_loopback_or_sharing_a_target_are_refused(
    routes: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LoadPlan.by_route(routes, "digits", ROWS)


def test_routes_must_carry_exactly_the_plan_s_targets() -> None:
    with pytest.raises(ValueError, match="every target on exactly one route"):
        _plan(routes=(Route("site-01", ()),))
    with pytest.raises(ValueError, match="one route a name"):
        _plan(routes=(Route("a", ("http://127.9.0.5:8080",)), Route("a", ())))


@pytest.mark.parametrize(
    "found",
    [["http://10.0.0.7:8080"], {"site-01": ["http://10.0.0.7:8080"]}],
    ids=["targets", "per-site"],
)
def test_following_load_keeps_going_and_says_why_when_it_finds_a_target_beyond_loopback(
    found: list[str] | dict[str, list[str]],
) -> None:
    with FollowingLoad(lambda: found, "digits", ROWS, seconds=30) as load:
        wait_for(lambda: len(load.problems) >= 2, timeout=10, what="a second lookup")
    assert all("only loopback" in p for p in load.problems)
    assert load.snapshot() == {} and load.unrouted == {}


def test_requests_are_due_on_a_fixed_schedule_at_the_rate() -> None:
    plan = _plan(rate=4)
    assert [plan.due(i) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_bodies_are_open_inference_requests_of_one_row_each_in_turn() -> None:
    plan = _plan(input_name="pixels")
    bodies = [json.loads(plan.body(i)) for i in range(3)]
    assert bodies[0] == {
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]
    }
    assert [b["inputs"][0]["data"] for b in bodies] == [[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]]


def test_errors_count_5xx_and_unanswered_requests_and_quantiles_are_nearest_rank() -> None:
    result = TargetResult()
    result.statuses.update({200: 8, 400: 1, 500: 2, 0: 1})
    result.latencies = [float(i) for i in range(1, 101)]
    assert result.sent == 12 and result.errors == 3
    assert result.quantile(0.5) == 50.0 and result.quantile(0.99) == 99.0
    assert result.quantile(1.0) == 100.0
    assert TargetResult().quantile(0.5) != TargetResult().quantile(0.5)  # NaN: nothing answered
