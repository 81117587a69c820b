"""Events said once: a repeat of the last Event about an object is dropped for a window,
a transition is always said, and a deleted object's memory goes."""

from __future__ import annotations

from typing import Any

import pytest

from fogline.controllers.announcer import Announcer
from fogline.controllers.metrics import OperatorMetrics

pytestmark = pytest.mark.unit

KEY = ("EdgeDeployment", "ns", "shop")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def announcer(clock: Clock, posted: list[tuple[str, str]]) -> Announcer:
    def post(body: Any, *, type: str, reason: str, message: str) -> None:
        posted.append((reason, message))

    return Announcer(OperatorMetrics(), window=60.0, clock=clock, post=post)


def test_a_repeated_event_is_posted_once_within_the_window() -> None:
    clock = Clock()
    posted: list[tuple[str, str]] = []
    events = announcer(clock, posted)
    for _ in range(5):
        events.announce(KEY, {}, "Normal", "RunSuperseded", "Job a deleted")
    assert posted == [("RunSuperseded", "Job a deleted")]
    clock.now += 61
    events.announce(KEY, {}, "Normal", "RunSuperseded", "Job a deleted")
    assert len(posted) == 2


def test_a_transition_back_is_announced_again() -> None:
    clock = Clock()
    posted: list[tuple[str, str]] = []
    events = announcer(clock, posted)
    events.announce(KEY, {}, "Normal", "Training", "running")
    events.announce(KEY, {}, "Warning", "Unschedulable", "no GPU")
    events.announce(KEY, {}, "Normal", "Training", "running")
    assert [r for r, _ in posted] == ["Training", "Unschedulable", "Training"]


def test_other_objects_and_other_messages_are_their_own_events() -> None:
    clock = Clock()
    posted: list[tuple[str, str]] = []
    events = announcer(clock, posted)
    events.announce(KEY, {}, "Normal", "WaveStarted", "wave 1")
    events.announce(KEY, {}, "Normal", "WaveStarted", "wave 2")
    events.announce(("EdgeDeployment", "ns", "other"), {}, "Normal", "WaveStarted", "wave 2")
    assert len(posted) == 3


def test_forget_drops_the_memory_of_a_deleted_object() -> None:
    clock = Clock()
    posted: list[tuple[str, str]] = []
    events = announcer(clock, posted)
    events.announce(KEY, {}, "Normal", "WaveStarted", "wave 1")
    assert events.tracked() == 1
    events.forget(KEY)
    assert events.tracked() == 0


def test_an_event_that_covers_another_says_it_too() -> None:
    clock = Clock()
    posted: list[tuple[str, str]] = []
    events = announcer(clock, posted)
    starting = ("PodsStarting", "waiting for the training pods to start")
    events.announce(KEY, {}, "Normal", "JobCreated", "created Job a; waiting", covers=starting)
    assert not events.announce(KEY, {}, "Normal", *starting)
    # The next transition is news, and so is going back to the covered state after it.
    assert events.announce(KEY, {}, "Normal", "Training", "the trainer is running")
    assert events.announce(KEY, {}, "Normal", *starting)
    assert [reason for reason, _ in posted] == ["JobCreated", "Training", "PodsStarting"]


def test_once_per_reason_says_a_reason_once_whatever_its_messages() -> None:
    clock = Clock()
    posted: list[tuple[str, str]] = []
    events = announcer(clock, posted)
    pod = ("Pod", "ns", "trainer-0")
    for rubbish in ("loss is NaN", "epoch is 1e308", "loss is NaN"):
        events.announce(pod, {}, "Warning", "PodReportIgnored", rubbish, once_per_reason=True)
    assert posted == [("PodReportIgnored", "loss is NaN")]
    clock.now += 61
    events.announce(pod, {}, "Warning", "PodReportIgnored", "epoch is 1e308", once_per_reason=True)
    assert posted[-1] == ("PodReportIgnored", "epoch is 1e308")
