"""set_condition is the one builder of metav1.Condition entries: lastTransitionTime moves
only when status flips, reason, message and generation always follow the latest call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from fogline.api.conditions import Condition, find_condition, rfc3339, set_condition

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 24, 8, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def ready(
    status: str, reason: str = "Started", when: datetime = T0, gen: int = 1
) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": "m",
        "lastTransitionTime": rfc3339(when),
        "observedGeneration": gen,
    }


@pytest.mark.parametrize(
    ("before", "status", "reason", "want_status", "want_time"),
    [
        pytest.param([], "True", "JobCreated", "True", T1, id="new-condition-starts-now"),
        pytest.param([ready("True")], "True", "Running", "True", T0, id="same-status-keeps-time"),
        pytest.param([ready("True")], "False", "JobFailed", "False", T1, id="flip-moves-time"),
        pytest.param([ready("False")], "Unknown", "Lost", "Unknown", T1, id="flip-to-unknown"),
        pytest.param([ready("True")], True, "Again", "True", T0, id="bool-true-is-True"),
        pytest.param([ready("True")], False, "Stopped", "False", T1, id="bool-false-flips"),
    ],
)
def test_last_transition_time_moves_only_when_status_flips(
    before: list[dict[str, Any]], status: Any, reason: str, want_status: str, want_time: datetime
) -> None:
    after = set_condition(before, "Ready", status, reason, "details", 2, T1)
    (condition,) = after
    assert condition == {
        "type": "Ready",
        "status": want_status,
        "reason": reason,
        "message": "details",
        "lastTransitionTime": rfc3339(want_time),
        "observedGeneration": 2,
    }


def test_other_conditions_keep_their_place_and_a_new_type_is_appended() -> None:
    before = [
        {**ready("True"), "type": "Succeeded"},
        ready("False"),
    ]
    after = set_condition(before, "Ready", "True", "Done", "ok", 3, T1)
    after = set_condition(after, "Progressing", "False", "Done", "ok", 3, T1)
    assert [c["type"] for c in after] == ["Succeeded", "Ready", "Progressing"]
    assert after[0] == before[0]


def test_input_is_not_changed_and_condition_objects_are_accepted() -> None:
    before = [ready("True")]
    snapshot = [dict(c) for c in before]
    set_condition(before, "Ready", "False", "Failed", "x", 2, T1)
    assert before == snapshot
    typed = [Condition.from_dict(ready("True"))]
    assert set_condition(typed, "Ready", "True", "Ok", "x", 2, T1)[0]["lastTransitionTime"] == (
        rfc3339(T0)
    )


def test_none_generation_is_left_out_and_none_conditions_are_empty() -> None:
    (condition,) = set_condition(None, "Ready", "True", "Ok", "", None, T0)
    assert "observedGeneration" not in condition


@pytest.mark.parametrize(
    ("type_", "reason", "now", "complaint"),
    [
        ("ready", "Ok", T0, "condition type must be CamelCase"),
        ("Ready", "not ok", T0, "condition reason must be CamelCase"),
        ("Ready", "", T0, "condition reason must be CamelCase"),
        ("Ready", "Ok", datetime(2026, 1, 1), "now must be timezone-aware"),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(
    type_: str, reason: str, now: datetime, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        set_condition([], type_, "True", reason, "", 1, now)


def test_rfc3339_is_utc_with_seconds() -> None:
    plus_two = datetime(2026, 11, 24, 10, 0, 0, 999, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(plus_two) == "2026-11-24T08:00:00Z"


def test_find_condition() -> None:
    conditions = [ready("True"), {**ready("False"), "type": "Degraded"}]
    found = find_condition(conditions, "Degraded")
    assert found is not None and found.status == "False" and not found.is_true
    assert find_condition(conditions, "Missing") is None
    assert find_condition(None, "Ready") is None
