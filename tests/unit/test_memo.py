"""The reconcile memo: a result is reused only for the very objects it was computed from,
and objects no longer met are let go."""

from __future__ import annotations

from typing import Any

import pytest

from fogline.controllers.memo import Remembered, SameObjects

pytestmark = pytest.mark.unit


def test_the_same_object_is_computed_once_and_an_equal_new_one_again() -> None:
    memo = SameObjects(lambda pod: pod["ready"])
    pod = {"ready": True}
    assert memo(pod) is True
    memo.round()
    assert memo(pod) is True
    assert memo.computed == 1
    replaced = {"ready": False}  # the next watch event: a new object, whatever it holds
    assert memo(replaced) is False
    assert memo(dict(replaced)) is False
    assert memo.computed == 3


def test_several_objects_count_together() -> None:
    memo = SameObjects(lambda body, status: (body["name"], status))
    body: dict[str, Any] = {"name": "fleet"}
    first, second = {"phase": "Progressing"}, {"phase": "Available"}
    assert memo(body, first) == ("fleet", first)
    assert memo(body, second) == ("fleet", second)
    assert memo(body, first) == ("fleet", first)
    assert memo.computed == 2


def test_objects_not_met_in_a_round_are_let_go() -> None:
    memo = SameObjects(lambda pod: pod["n"])
    pods = [{"n": i} for i in range(50)]
    for pod in pods:
        memo(pod)
    memo.round()
    memo(pods[0])
    memo.round()
    memo.round()
    assert len(memo) == 0, "entries outlived the objects the reconciles met"
    memo(pods[1])
    assert memo.computed == 51


def test_a_result_by_value_stays_while_asked_for_and_a_new_generation_misses() -> None:
    hashes: Remembered[tuple[int, str], str] = Remembered()
    hashes.keep((1, "berlin"), "h1")
    hashes.round()
    assert hashes.found((1, "berlin")) == "h1"
    assert hashes.found((2, "berlin")) is None, "a new spec generation reused an old hash"
    hashes.round()
    hashes.round()
    assert hashes.found((1, "berlin")) is None
    assert len(hashes) == 0
