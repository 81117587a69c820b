"""Operator start-up: kopf settings (finalizers, peering so that two replicas never both
act, posting), Fogline's own settings and the shared API client, kept in kopf's memo."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from fogline.controllers.metrics import OperatorMetrics, serve_metrics
from fogline.kube import KubeClient
from fogline.settings import OperatorSettings


@dataclass
class OperatorState:
    """What every handler shares, stored in kopf's memo under `fogline`."""

    settings: OperatorSettings
    kube: KubeClient
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    locks: dict[tuple[str, str, str], asyncio.Lock] = field(default_factory=dict)
    rbac_ready: set[str] = field(default_factory=set)
    # The last Event reason posted per object: bodies in kopf's indexes can lag behind our
    # own status patches, and a transition must be announced once, not once per lag.
    announced: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def should_announce(self, kind: str, namespace: str, name: str, reason: str) -> bool:
        key = (kind, namespace, name)
        if self.announced.get(key) == reason:
            return False
        self.announced[key] = reason
        return True

    # Debounced reconciles: many events about one object become one reconcile.
    pending: dict[tuple[str, str, str], asyncio.TimerHandle] = field(default_factory=dict)
    indexes: dict[str, Any] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # DaemonSet generations as our last apply left them: a different one means drift.
    applied_generations: dict[tuple[str, str], int] = field(default_factory=dict)
    node_essence: dict[str, str] = field(default_factory=dict)
    failures: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def kick(
        self,
        key: tuple[str, str, str],
        reconcile: Callable[[str, str], Coroutine[Any, Any, None]],
        delay: float = 0.2,
    ) -> None:
        """Reconcile `key` after `delay` seconds; an earlier pending kick wins, so a burst
        of events costs one reconcile. `reconcile(namespace, name)` reads fresh state."""
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        existing = self.pending.get(key)
        if existing is not None and not existing.cancelled() and existing.when() <= due:
            return
        if existing is not None:
            existing.cancel()

        def fire() -> None:
            self.pending.pop(key, None)
            task: asyncio.Task[None] = loop.create_task(reconcile(key[1], key[2]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        self.pending[key] = loop.call_later(max(0.0, delay), fire)

    def post_event(self, body: kopf.Body, type: str, reason: str, message: str) -> None:
        """An Event on the object, counted in the operator's metrics."""
        self.metrics.events[(type, reason)] += 1
        kopf.event(body, type=type, reason=reason, message=message)

    def lock(self, kind: str, namespace: str, name: str) -> asyncio.Lock:
        """One reconcile at a time per object, whichever event triggered it."""
        return self.locks.setdefault((kind, namespace, name), asyncio.Lock())


def utcnow() -> datetime:
    """The clock, read by handlers only: pure code takes `now` as an argument."""
    return datetime.now(UTC)


def state_of(memo: Any) -> OperatorState:
    state: OperatorState = memo.fogline
    return state


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = "fogline.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="fogline.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="fogline.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    # How long a silent replica still counts as alive; a standby takes over after that.
    settings.peering.lifetime = int(os.environ.get("FOGLINE_PEERING_LIFETIME", "60"))
    settings.watching.server_timeout = 300
    settings.batching.error_delays = [1, 2, 5, 10, 30]
    state = OperatorState(settings=OperatorSettings.from_env(), kube=KubeClient())
    state.kube.metrics = state.metrics
    memo.fogline = state
    if port := os.environ.get("FOGLINE_METRICS_PORT"):
        memo.metrics_server = await serve_metrics(state.metrics, "0.0.0.0", int(port))


@kopf.on.cleanup()
async def stop_metrics(memo: kopf.Memo, **_: Any) -> None:
    server = getattr(memo, "metrics_server", None)
    if server is not None:
        server.close()
        await server.wait_closed()
