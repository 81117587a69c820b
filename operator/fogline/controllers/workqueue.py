"""The controllers' work queue, in controller-runtime's model: events name a key (kind,
namespace, name), never a body; a key waits at most once in the queue however many events
name it (debounce), runs in at most one reconcile at a time (events during a reconcile
run it once more afterwards, when the earliest of them is due), and a reconcile that
raises is retried with jittered exponential back-off instead of being lost with its event. `forget` drops a deleted
object's key with everything the queue remembered about it.

asyncio has no such queue and kopf's own retries cover only its change handlers, not its
event handlers or work started outside them; hence this small module."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)

Key = tuple[str, str, str]  # kind, namespace, name
# A reconcile returns None when it is done, or the seconds after which it wants to run
# again (the rollout planner's pause between waves).
Reconcile = Callable[[Key], Awaitable[float | None]]


class QueueMetrics(Protocol):
    """What the queue reports; the operator's Prometheus metrics implement it."""

    def queue_depth(self, kind: str, depth: int) -> None: ...
    def queue_retry(self, kind: str) -> None: ...
    def queue_latency(self, kind: str, seconds: float) -> None: ...


@dataclass(frozen=True)
class Backoff:
    """Delay before the n-th retry of a failing key: base * 2**(n-1), capped, then
    spread by +-jitter so that keys failing together do not retry together."""

    base: float = 0.5
    cap: float = 60.0
    jitter: float = 0.2

    def delay(self, failures: int, rand: random.Random) -> float:
        raw = min(self.cap, self.base * 2.0 ** max(0, failures - 1))
        return raw * (1.0 + self.jitter * (2.0 * rand.random() - 1.0))


# How long a key waits for more events before its reconcile: long enough that the events
# of one change (a pod created, scheduled, started) are seen together, short because each
# step of a rollout wave (the next node's pod goes once the last one serves) waits for it.
# A rollout of 5-node sites has 30 such steps; at 0.2 s they added about a tenth to its time
# (bench/bench_rollout.py), at 0.1 s half that, for a tenth more operator CPU.
DEBOUNCE_SECONDS = 0.1


class WorkQueue:
    def __init__(
        self,
        reconcile: Reconcile,
        *,
        debounce: float = DEBOUNCE_SECONDS,
        backoff: Backoff | None = None,
        workers: int = 8,
        metrics: QueueMetrics | None = None,
        rand: random.Random | None = None,
    ) -> None:
        self._reconcile = reconcile
        self.debounce = debounce
        self.backoff = backoff or Backoff()
        self._slots = asyncio.Semaphore(workers)
        self._metrics = metrics
        self._rand = rand or random.Random()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._queued_at: dict[Key, float] = {}  # when a key entered the queue, for latency
        self._waiting: set[Key] = set()  # due, waiting for a worker
        self._active: set[Key] = set()  # in a reconcile now
        self._dirty: dict[Key, float] = {}  # named again during its reconcile: when due
        self._failures: dict[Key, int] = {}
        self._depth: Counter[str] = Counter()  # keys in _timers or _waiting, by kind
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- what the controllers call --------------------------------------------------------

    def add(self, key: Key, delay: float | None = None) -> None:
        """Reconcile `key` after `delay` (the debounce by default). A key already waiting
        keeps the earlier of its two due times; a key in a reconcile now runs again after it,
        at the earliest due time of the adds it got meanwhile."""
        if self._closed:
            return
        delay = self.debounce if delay is None else max(0.0, delay)
        if key in self._waiting:
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        if key in self._active:
            self._dirty[key] = min(due, self._dirty.get(key, due))
            return
        existing = self._timers.get(key)
        if existing is not None:
            if existing.when() <= due:
                return
            existing.cancel()
        else:
            self._depth[key[0]] += 1
        self._queued_at.setdefault(key, loop.time())
        self._timers[key] = loop.call_at(due, self._due, key)
        self._report_depth(key[0])

    def forget(self, key: Key) -> None:
        """The object is gone: drop its timer, its failure count and its pending rerun."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
            self._depth[key[0]] -= 1
        self._failures.pop(key, None)
        self._dirty.pop(key, None)
        self._queued_at.pop(key, None)
        self._report_depth(key[0])

    def failures(self, key: Key) -> int:
        return self._failures.get(key, 0)

    def depth(self, kind: str | None = None) -> int:
        """Keys waiting (for their time or for a worker), not counting those running."""
        return self._depth[kind] if kind is not None else sum(self._depth.values())

    def tracked(self) -> int:
        """Keys the queue holds any memory of: zero once every object is deleted."""
        keys = set(self._timers) | self._waiting | self._active | self._dirty.keys()
        return len(keys | self._failures.keys() | self._queued_at.keys())

    async def idle(self) -> None:
        """Until nothing is due now or running (timers further away do not count)."""
        while self._waiting or self._active or self._tasks:
            await asyncio.sleep(0)
            if self._tasks:
                await asyncio.wait(set(self._tasks))

    async def close(self) -> None:
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._depth.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    # -- inside ---------------------------------------------------------------------------

    def _due(self, key: Key) -> None:
        self._timers.pop(key, None)
        self._waiting.add(key)
        task = asyncio.get_running_loop().create_task(self._run(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Key) -> None:
        kind = key[0]
        async with self._slots:
            self._waiting.discard(key)
            self._depth[kind] -= 1
            self._active.add(key)
            loop = asyncio.get_running_loop()
            queued = self._queued_at.pop(key, None)
            if queued is not None and self._metrics is not None:
                self._metrics.queue_latency(kind, loop.time() - queued)
            self._report_depth(kind)
            retry: float | None = None
            try:
                retry = await self._reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                retry = self.backoff.delay(failures, self._rand)
                if self._metrics is not None:
                    self._metrics.queue_retry(kind)
                logger.exception(
                    "reconcile of %s %s/%s failed (%d in a row); retrying in %.1f s",
                    kind,
                    key[1],
                    key[2],
                    failures,
                    retry,
                )
            else:
                self._failures.pop(key, None)
            finally:
                self._active.discard(key)
            due = self._dirty.pop(key, None)
            if due is not None and key not in self._failures:
                # Something changed while we looked: look again when the earliest of those
                # events is due, counted from its arrival, not from the reconcile's end (a
                # wave's next pod waited a whole debounce more at each step). A failing key
                # keeps its back-off, or its own partial writes would make a hot loop.
                left = max(0.0, due - loop.time())
                retry = left if retry is None else min(retry, left)
            if retry is not None:
                self.add(key, retry)

    def _report_depth(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth(kind, self.depth(kind))
