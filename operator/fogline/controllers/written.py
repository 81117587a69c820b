"""Status writes of our CRs, for both controllers: what changed is patched; a change that is
only progress may wait for the next ones; and what a patch left is read back until the
watch brings it (read-your-writes).

A watch delivers our own status patches late on a busy API server, so a reconcile can run
on a body that predates the last patch; it would then write the same change again (and
plan from old memory). What a patch left is remembered, with the resourceVersions that
predate it, until the watch brings a body of another version (ours caught up, or someone
else wrote)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fogline.api.status import status_patch
from fogline.controllers.workqueue import Key

if TYPE_CHECKING:
    from fogline.kube import KubeClient

# How long a status change that is only progress may wait for the next ones: pods move one
# by one, and a patch per transition would be most of the operator's writes; on a busy API
# server a reconcile takes seconds, so a shorter wait would still write after nearly every
# one. A transition a user or a controller acts on (phase, conditions, memory) is written
# at once, carrying the progress with it.
STATUS_COALESCE_SECONDS = 5.0


@dataclass(frozen=True)
class _Written:
    stale: frozenset[str]  # versions that predate the patch
    version: str | None  # the version the patch left
    status: dict[str, Any]  # the status the patch left


def _never(patch: Mapping[str, Any]) -> bool:
    return False


@dataclass
class StatusWriter:
    clock: Callable[[], float] = time.monotonic
    _written: dict[Key, _Written] = field(default_factory=dict)
    # Since when a change that is only progress has waited to be written.
    _held_since: dict[Key, float] = field(default_factory=dict)

    def view(self, key: Key, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """The body, with the status our last patch left while the body predates it."""
        written = self._written.get(key)
        if written is None:
            return body
        if (body.get("metadata") or {}).get("resourceVersion") not in written.stale:
            del self._written[key]
            return body
        return {**body, "status": written.status}

    async def write(
        self,
        kube: KubeClient,
        key: Key,
        body: Mapping[str, Any],
        desired: Mapping[str, Any],
        removable: Iterable[str] = (),
        may_wait: Callable[[Mapping[str, Any]], bool] = _never,
    ) -> float | None:
        """Patch what `desired` changes in the status of `body` (as `view` gave it): at
        once or, when `may_wait` says the patch is only progress, once it has waited
        STATUS_COALESCE_SECONDS. Returns the seconds until a held change is due."""
        current = dict(body.get("status") or {})
        patch = status_patch(current, desired, removable)
        if not patch:
            self._held_since.pop(key, None)
            return None
        if may_wait(patch):
            now = self.clock()
            since = self._held_since.setdefault(key, now)
            if now - since < STATUS_COALESCE_SECONDS:
                return since + STATUS_COALESCE_SECONDS - now
        kind, namespace, name = key
        version = await kube.patch_status(kind, namespace, name, patch)
        self._held_since.pop(key, None)
        self._record(
            key,
            (body.get("metadata") or {}).get("resourceVersion"),
            current,
            desired,
            patch,
            version,
        )
        return None

    def _record(
        self,
        key: Key,
        planned_from: str | None,
        current: Mapping[str, Any],
        desired: Mapping[str, Any],
        patch: Mapping[str, Any],
        version: str | None,
    ) -> None:
        after = {k: v for k, v in current.items() if patch.get(k, v) is not None}
        after.update({k: desired[k] for k, v in patch.items() if v is not None})
        # Versions that predate this patch: the body planned from, and what earlier patches
        # of ours left (still on their way through the watch). Only this patch's own
        # version, or a later one, shows it.
        earlier = self._written.get(key)
        stale = {planned_from, *(earlier.stale | {earlier.version} if earlier else ())}
        stale.discard(version)
        self._written[key] = _Written(frozenset(v for v in stale if v), version, after)

    def forget(self, key: Key) -> None:
        self._written.pop(key, None)
        self._held_since.pop(key, None)

    def tracked(self) -> int:
        return len(self._written) + len(self._held_since)
