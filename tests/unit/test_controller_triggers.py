"""Which watch events of the operator's own kinds wake a reconcile: every kind of event but
a modification that the status has already answered, so the operator's own status writes
never wake it again."""

from __future__ import annotations

from typing import Any

import pytest

from fogline.controllers.runtime import spec_may_have_changed

pytestmark = pytest.mark.unit


def body(generation: int, observed: int | None) -> dict[str, Any]:
    status = {} if observed is None else {"observedGeneration": observed}
    return {"metadata": {"name": "x", "generation": generation}, "status": status}


@pytest.mark.parametrize("event_type", [None, "ADDED", "DELETED"])
def test_listing_creation_and_deletion_always_reconcile(event_type: str | None) -> None:
    assert spec_may_have_changed(event_type, body(3, 3))


def test_a_spec_change_the_status_has_not_answered_reconciles() -> None:
    assert spec_may_have_changed("MODIFIED", body(4, 3))


def test_an_object_without_status_yet_reconciles_on_modification() -> None:
    assert spec_may_have_changed("MODIFIED", {"metadata": {"generation": 1}})


def test_a_status_write_that_answers_the_generation_wakes_nothing() -> None:
    assert not spec_may_have_changed("MODIFIED", body(4, 4))
