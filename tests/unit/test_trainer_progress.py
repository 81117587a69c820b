"""The progress reporter with an injected patch function and clocks: throttling, payload
shape, and that a failing API never reaches training."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime

import pytest

from fogline.workloads.trainer.progress import (
    ANNOTATION,
    EpochReport,
    ProgressReporter,
    interval_from_environment,
    reporter_from_environment,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 24, 5, 30, tzinfo=UTC)


def report(epoch: int) -> EpochReport:
    return EpochReport(epoch, 10, 0.25, 0.3, 0.9, 1234.56, 0.5)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_payload_is_the_annotation_the_operator_reads() -> None:
    sent: list[Mapping[str, str]] = []
    reporter = ProgressReporter(sent.append, interval_seconds=0, wall_clock=lambda: NOW)
    assert reporter.report(report(3))
    assert json.loads(sent[0][ANNOTATION]) == {
        "epoch": 3,
        "epochs": 10,
        "loss": 0.25,
        "metric": {"name": "accuracy", "value": 0.9},
        "samplesPerSecond": 1234.6,
        "updatedAt": "2026-11-24T05:30:00Z",
    }


def test_patches_at_most_once_per_interval_and_per_epoch() -> None:
    sent: list[Mapping[str, str]] = []
    clock = FakeClock()
    reporter = ProgressReporter(sent.append, interval_seconds=5, monotonic=clock)
    outcomes = []
    for epoch, at in [(1, 100.0), (2, 101.0), (3, 104.9), (4, 105.0), (4, 200.0), (5, 200.0)]:
        clock.now = at
        outcomes.append(reporter.report(report(epoch)))
    assert outcomes == [True, False, False, True, False, True]
    assert [json.loads(p[ANNOTATION])["epoch"] for p in sent] == [1, 4, 5]


def test_failing_api_warns_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    def broken(_: Mapping[str, str]) -> None:
        raise ConnectionError("apiserver unreachable")

    reporter = ProgressReporter(broken, interval_seconds=0)
    with caplog.at_level(logging.DEBUG, logger="fogline.workloads.trainer.progress"):
        assert [reporter.report(report(epoch)) for epoch in (1, 2, 3)] == [False] * 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "apiserver unreachable" in warnings[0].getMessage()


def test_no_pod_name_means_no_reporting() -> None:
    assert not reporter_from_environment({}).enabled


def test_unreachable_configuration_disables_reporting(caplog: pytest.LogCaptureFixture) -> None:
    env = {"POD_NAME": "train-0", "POD_NAMESPACE": "ml", "KUBECONFIG": "/nonexistent/config"}
    with caplog.at_level(logging.WARNING):
        assert not reporter_from_environment(env).enabled
    assert "progress reporting is off" in caplog.text


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, 5.0), ("2.5", 2.5), ("-1", 0.0), ("soon", 5.0)]
)
def test_interval_comes_from_the_environment(raw: str | None, expected: float) -> None:
    env = {} if raw is None else {"FOGLINE_PROGRESS_INTERVAL": raw}
    assert interval_from_environment(env) == expected


def test_a_non_finite_epoch_is_never_patched_as_bare_nan() -> None:
    sent: list[Mapping[str, str]] = []
    reporter = ProgressReporter(sent.append, interval_seconds=0, wall_clock=lambda: NOW)
    assert not reporter.report(EpochReport(1, 10, float("nan"), 0.3, 0.1, 10.0, 0.5))
    assert reporter.report(report(2))
    assert len(sent) == 1 and json.loads(sent[0][ANNOTATION])["epoch"] == 2
