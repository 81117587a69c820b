"""Status conditions in the metav1.Condition shape: the one place that builds them, so
every controller moves lastTransitionTime only when a condition's status flips."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from fogline.api.codec import decode_object, encode
from fogline.api.timestamps import rfc3339

ConditionStatus = Literal["True", "False", "Unknown"]

_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
_TYPE = re.compile(r"^[A-Z][A-Za-z0-9]*$")


@dataclass(frozen=True)
class Condition:
    """One entry of status.conditions."""

    type: str
    status: ConditionStatus
    reason: str
    message: str
    last_transition_time: str
    observed_generation: int | None = None

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Condition:
        return decode_object(cls, value, "condition")

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = encode(self)
        return result

    @property
    def is_true(self) -> bool:
        return self.status == "True"


def is_reason(value: str) -> bool:
    """True for a reason a condition accepts: CamelCase, as metav1.Condition requires."""
    return _REASON.match(value) is not None


def _as_condition(value: Condition | Mapping[str, Any]) -> Condition:
    return value if isinstance(value, Condition) else Condition.from_dict(value)


def _as_status(status: ConditionStatus | bool) -> ConditionStatus:
    if status is True:
        return "True"
    if status is False:
        return "False"
    if status in ("True", "False", "Unknown"):
        return status
    raise ValueError(f"condition status must be True, False or Unknown; got {status!r}")


def set_condition(
    conditions: Iterable[Condition | Mapping[str, Any]] | None,
    type: str,
    status: ConditionStatus | bool,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The conditions with `type` set, as dicts ready for a status patch.

    lastTransitionTime becomes `now` when the condition is new or its status flips, and is
    kept otherwise (a new reason or message is not a transition). Order is kept; a new type
    is appended. The input is not changed.
    """
    if not _TYPE.match(type):
        raise ValueError(f"condition type must be CamelCase, such as Ready; got {type!r}")
    if not _REASON.match(reason):
        raise ValueError(f"condition reason must be CamelCase, such as JobCreated; got {reason!r}")
    wanted = _as_status(status)
    result: list[Condition] = []
    found = False
    for existing in map(_as_condition, conditions or ()):
        if existing.type != type:
            result.append(existing)
            continue
        found = True
        flipped = existing.status != wanted
        result.append(
            replace(
                existing,
                status=wanted,
                reason=reason,
                message=message,
                observed_generation=generation,
                last_transition_time=rfc3339(now) if flipped else existing.last_transition_time,
            )
        )
    if not found:
        result.append(Condition(type, wanted, reason, message, rfc3339(now), generation))
    return [condition.to_dict() for condition in result]


def find_condition(
    conditions: Sequence[Condition | Mapping[str, Any]] | None, type: str
) -> Condition | None:
    """The condition of `type`, or None."""
    for condition in map(_as_condition, conditions or ()):
        if condition.type == type:
            return condition
    return None
