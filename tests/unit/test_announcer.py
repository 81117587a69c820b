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
