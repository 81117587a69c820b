"""Kubernetes Events, each said once: an Event is posted when it differs from the last one
posted about the same object, or when the same (reason, message) was last said longer ago
than the window. Bodies in kopf's indexes can lag behind our own status patches, and a
reconcile may run many times in one state; neither may repeat an Event. `forget` drops a
deleted object's memory."""

from __future__ import annotations

import time
from collections.abc import Callable

import kopf

from fogline.controllers.metrics import OperatorMetrics
from fogline.controllers.workqueue import Key

DEFAULT_WINDOW = 600.0


class Announcer:
    def __init__(
        self,
        metrics: OperatorMetrics,
        window: float = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        post: Callable[..., None] = kopf.event,
    ) -> None:
        self.metrics = metrics
        self.window = window
        self._clock = clock
        self._post = post
        self._last: dict[Key, tuple[str, str]] = {}
        self._said: dict[Key, dict[tuple[str, str], float]] = {}

    def should_post(self, key: Key, reason: str, message: str) -> bool:
        """True, and remembered, when this Event is news for `key`."""
        now = self._clock()
        said = self._said.setdefault(key, {})
        what = (reason, message)
        when = said.get(what)
        if self._last.get(key) == what and when is not None and now - when < self.window:
            return False
        # Keep the memory small: only what was said within the window matters.
        for old, at in list(said.items()):
            if now - at >= self.window:
                del said[old]
        said[what] = now
        self._last[key] = what
        return True

    def announce(
        self,
        key: Key,
        body: kopf.Body,
        type: str,
        reason: str,
        message: str,
        covers: tuple[str, str] | None = None,
        once_per_reason: bool = False,
    ) -> bool:
        """Post the Event unless it would repeat itself; True when it was posted. `covers`
        is another (reason, message) that this Event's message says too: it counts as said
        and is not posted after this one. With `once_per_reason`, the reason said about
        `key` within the window is not said again whatever the message (a pod that keeps
        writing new rubbish gets one Warning)."""
        if once_per_reason and self._said_within_window(key, reason):
            return False
        if not self.should_post(key, reason, message):
            return False
        self.metrics.events.labels(type, reason).inc()
        self._post(body, type=type, reason=reason, message=message)
        if covers is not None:
            self.should_post(key, *covers)
        return True

    def _said_within_window(self, key: Key, reason: str) -> bool:
        now = self._clock()
        said = self._said.get(key, {})
        return any(r == reason and now - at < self.window for (r, _), at in said.items())

    def forget(self, key: Key) -> None:
        self._last.pop(key, None)
        self._said.pop(key, None)

    def tracked(self) -> int:
        return len(self._said.keys() | self._last.keys())
