"""Our CRs' status writes: what changed is patched, a change that is only progress waits for
the next ones (STATUS_COALESCE_SECONDS at most), and a body that predates our last patch is
read with the status that patch left, while a body of any other version is read as it is."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import pytest

from fogline.controllers.written import STATUS_COALESCE_SECONDS, StatusWriter
from fogline.kube import KubeClient

pytestmark = pytest.mark.unit

KEY = ("ModelTraining", "ns", "digits")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Server:
    """The status subresource's side of a patch: each one bumps the resourceVersion."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch_status(
        self, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> str:
        self.patches.append(dict(status))
        return str(10 + len(self.patches))


def body(version: str, **status: object) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": version}, "status": status}


def write(writer: StatusWriter, server: Server, seen: Mapping[str, Any], **kw: Any) -> Any:
    kube = cast(KubeClient, server)
    return asyncio.run(writer.write(kube, KEY, writer.view(KEY, seen), **kw))


def only_progress(patch: Mapping[str, Any]) -> bool:
    return patch.keys() <= {"progress"}


def test_a_body_older_than_our_patch_is_read_with_the_status_it_left() -> None:
    writer, server = StatusWriter(), Server()
    old = body("10", phase="Pending", progress={"epoch": 1})
    desired = {"phase": "Running", "conditions": [{"type": "Progressing"}]}
    write(writer, server, old, desired=desired, removable=("progress",))
    assert server.patches == [{**desired, "progress": None}]
    # The watch has not brought our patch: the same change is not written again.
    assert writer.view(KEY, old)["status"] == desired
    write(writer, server, old, desired=desired, removable=("progress",))
    assert len(server.patches) == 1


def test_a_body_of_another_version_is_read_as_it_is_and_ends_the_memory() -> None:
    writer, server = StatusWriter(), Server()
    write(writer, server, body("10"), desired={"phase": "Running"})
    someone_else = body("12", phase="Failed")
    assert writer.view(KEY, someone_else) is someone_else
    assert writer.tracked() == 0
    assert writer.view(KEY, body("10")) == body("10")


def test_versions_earlier_patches_left_still_predate_the_last_one() -> None:
    writer, server = StatusWriter(), Server()
    write(writer, server, body("10"), desired={"phase": "Pending"})  # leaves 11
    write(writer, server, body("10"), desired={"phase": "Running"})  # leaves 12
    # The watch brings our first patch (version 11): it is still older than the second.
    assert writer.view(KEY, body("11", phase="Pending"))["status"] == {"phase": "Running"}
    assert writer.view(KEY, body("12", phase="Running")) == body("12", phase="Running")


def test_progress_waits_for_a_transition_or_the_coalescing_time() -> None:
    clock = Clock()
    writer, server = StatusWriter(clock=clock), Server()
    seen = body("10", phase="Running", progress={"epoch": 1})
    held = write(writer, server, seen, desired={"progress": {"epoch": 2}}, may_wait=only_progress)
    assert held == STATUS_COALESCE_SECONDS and server.patches == []
    clock.now += 2
    held = write(writer, server, seen, desired={"progress": {"epoch": 3}}, may_wait=only_progress)
    assert held == STATUS_COALESCE_SECONDS - 2 and server.patches == []
    # A transition is written at once, with the progress it carries.
    done = {"phase": "Succeeded", "progress": {"epoch": 4}}
    assert write(writer, server, seen, desired=done, may_wait=only_progress) is None
    assert server.patches == [done]

    clock.now += 1
    later = body("11", **done)
    write(writer, server, later, desired={"progress": {"epoch": 5}}, may_wait=only_progress)
    clock.now += STATUS_COALESCE_SECONDS
    assert (
        write(writer, server, later, desired={"progress": {"epoch": 6}}, may_wait=only_progress)
        is None
    )
    assert server.patches[-1] == {"progress": {"epoch": 6}}
