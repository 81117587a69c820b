"""The kopf settings the operator's speed rests on: kopf is told to keep no diff base, which
is right only while no handler needs one."""

from __future__ import annotations

import kopf
import pytest

# Imported for their handlers, which register themselves with kopf's default registry.
import fogline.controllers.edgedeployment
import fogline.controllers.modeltraining  # noqa: F401
from fogline.controllers.runtime import NoDiffBase

pytestmark = pytest.mark.unit


def test_the_operator_registers_no_handler_that_needs_kopfs_diff_base() -> None:
    # kopf has no public view of its registry; its change and spawning registries are the
    # handlers (on.create/update/delete/resume/field, timers, daemons) that read a diff.
    registry = kopf.get_default_registry()
    handlers = [
        *registry._changing.get_all_handlers(),
        *registry._spawning.get_all_handlers(),
    ]
    assert not handlers, (
        f"{[h.id for h in handlers]} need kopf's diff base: drop NoDiffBase from "
        "runtime.configure, or make them event handlers"
    )
    assert registry._watching.get_all_handlers(), "no event handler found: wrong registry"


def test_the_storage_keeps_and_copies_nothing_of_a_body() -> None:
    storage = NoDiffBase()
    body = kopf.Body({"metadata": {"name": "a"}, "spec": {"big": list(range(1000))}})
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    assert not patch, "the storage wrote something onto the object"
