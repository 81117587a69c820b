"""The controllers' work queue: de-duplication, one reconcile per key at a time, reruns for
events that arrive during a reconcile, back-off on failure, requeues, forgetting deleted
keys and the metrics it reports. Pure asyncio; delays are zero or a millisecond, and the
assertions count reconciles, never time them."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from fogline.controllers.workqueue import Backoff, Key, WorkQueue

pytestmark = pytest.mark.unit

A: Key = ("EdgeDeployment", "ns", "a")
B: Key = ("EdgeDeployment", "ns", "b")
FAST = Backoff(base=0.001, cap=0.004, jitter=0.0)


class Recorder:
    """Queue metrics as a test reads them."""

    def __init__(self) -> None:
        self.depths: list[int] = []
        self.retries: Counter[str] = Counter()
        self.latencies: list[float] = []

    def queue_depth(self, kind: str, depth: int) -> None:
        self.depths.append(depth)

    def queue_retry(self, kind: str) -> None:
        self.retries[kind] += 1

    def queue_latency(self, kind: str, seconds: float) -> None:
        self.latencies.append(seconds)


def test_a_burst_of_adds_costs_one_reconcile() -> None:
    runs: Counter[Key] = Counter()

    async def reconcile(key: Key) -> None:
        runs[key] += 1

    async def scenario() -> None:
        queue = WorkQueue(reconcile, debounce=0.001)
        for _ in range(100):
            queue.add(A)
            queue.add(B)
        assert queue.depth() == 2
        await asyncio.sleep(0.01)
        await queue.idle()

    asyncio.run(scenario())
    assert runs == {A: 1, B: 1}


def test_an_earlier_add_moves_the_due_time_forward() -> None:
    runs: list[Key] = []

    async def reconcile(key: Key) -> None:
        runs.append(key)

    async def scenario() -> None:
        queue = WorkQueue(reconcile)
        queue.add(A, delay=3600)  # a requeue far away...
        queue.add(A, delay=0)  # ...and an event now: the event wins
        await asyncio.sleep(0.01)
        await queue.idle()
        assert queue.depth() == 0

    asyncio.run(scenario())
    assert runs == [A]


def test_one_key_never_reconciles_concurrently_and_an_add_during_it_reruns_once() -> None:
    running = 0
    most = 0
    runs = 0
    release = asyncio.Event()

    async def scenario() -> None:
        async def reconcile(key: Key) -> None:
            nonlocal running, most, runs
            running += 1
            most = max(most, running)
            runs += 1
            if runs == 1:
                await release.wait()
            running -= 1

        queue = WorkQueue(reconcile, debounce=0)
        queue.add(A)
        await asyncio.sleep(0.005)
        assert runs == 1
        for _ in range(10):
            queue.add(A)  # events while the first reconcile is under way
        await asyncio.sleep(0.005)
        assert runs == 1, "a second reconcile of the same key started alongside the first"
        release.set()
        await asyncio.sleep(0.01)
        await queue.idle()

    asyncio.run(scenario())
    assert most == 1
    assert runs == 2


def reruns(
    debounce: float, delays: list[float | None], held_for: float = 0.0, then: float = 0.05
) -> tuple[int, int]:
    """Adds of one key with `delays` (None: the debounce) just after its first reconcile
    began, which lasts `held_for` seconds: how many reconciles had run `then` seconds after
    it ended, and how many keys were still waiting."""
    runs = 0
    release = asyncio.Event()

    async def scenario() -> int:
        nonlocal runs

        async def reconcile(key: Key) -> None:
            nonlocal runs
            runs += 1
            if runs == 1:
                await release.wait()

        queue = WorkQueue(reconcile, debounce=debounce)
        queue.add(A, delay=0)
        await asyncio.sleep(0.01)
        for delay in delays:
            queue.add(A, delay)
        await asyncio.sleep(held_for)
        release.set()
        await asyncio.sleep(then)
        waiting = queue.depth()
        await queue.close()
        return waiting

    waiting = asyncio.run(scenario())
    return runs, waiting


def test_an_event_during_a_long_reconcile_reruns_it_without_a_second_debounce() -> None:
    # A pod became Ready just after the reconcile began; the reconcile outlasts the debounce.
    runs, _ = reruns(debounce=1.0, delays=[None], held_for=1.05, then=0.4)
    assert runs == 2, "the rerun waited for a whole debounce after the reconcile"


def test_an_urgent_event_during_a_reconcile_reruns_it_right_after() -> None:
    # Progress only (may wait for the debounce), then one the next step waits on.
    runs, _ = reruns(debounce=3600, delays=[None, 0])
    assert runs == 2, "the urgent event waited for the debounce"


def test_an_event_late_in_a_reconcile_still_waits_out_its_debounce() -> None:
    runs, waiting = reruns(debounce=3600, delays=[None])
    assert runs == 1, "a burst during a reconcile was not batched"
    assert waiting == 1


def test_different_keys_reconcile_side_by_side_up_to_the_worker_count() -> None:
    running = 0
    most = 0

    async def scenario() -> None:
        gate = asyncio.Event()

        async def reconcile(key: Key) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await gate.wait()
            running -= 1

        queue = WorkQueue(reconcile, debounce=0, workers=3)
        for index in range(5):
            queue.add(("EdgeDeployment", "ns", f"e{index}"))
        await asyncio.sleep(0.01)
        assert running == 3
        assert queue.depth() == 2  # two keys wait for a worker
        gate.set()
        await asyncio.sleep(0.01)
        await queue.idle()

    asyncio.run(scenario())
    assert most == 3


def test_a_failing_reconcile_is_retried_with_back_off_until_it_succeeds() -> None:
    attempts = 0
    recorder = Recorder()

    async def reconcile(key: Key) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            raise RuntimeError("the API server is away")

    async def scenario() -> WorkQueue:
        queue = WorkQueue(reconcile, debounce=0, backoff=FAST, metrics=recorder)
        queue.add(A)
        for _ in range(200):
            await asyncio.sleep(0.002)
            if attempts == 4:
                break
        await queue.idle()
        return queue

    queue = asyncio.run(scenario())
    assert attempts == 4
    assert recorder.retries["EdgeDeployment"] == 3
    assert queue.failures(A) == 0  # a success forgets the failures
    assert queue.tracked() == 0


def test_an_event_during_a_failing_reconcile_does_not_skip_the_back_off() -> None:
    attempts = 0

    async def scenario() -> WorkQueue:
        async def reconcile(key: Key) -> None:
            nonlocal attempts
            attempts += 1
            queue.add(A)  # our own write shows up as an event during the reconcile
            raise RuntimeError("conflict")

        queue = WorkQueue(reconcile, debounce=0, backoff=Backoff(base=3600, cap=3600))
        queue.add(A)
        await asyncio.sleep(0.01)
        await queue.idle()
        return queue

    queue = asyncio.run(scenario())
    assert attempts == 1, "a failing reconcile that writes must not loop hot"
    assert queue.failures(A) == 1
    assert queue.depth() == 1  # waiting for its back-off


def test_back_off_doubles_up_to_the_cap_and_jitter_spreads_it() -> None:
    exact = Backoff(base=0.5, cap=60.0, jitter=0.0)
    rand = random.Random(7)
    assert [exact.delay(n, rand) for n in (1, 2, 3, 4, 8, 20)] == [0.5, 1.0, 2.0, 4.0, 60.0, 60.0]
    jittered = Backoff(base=10.0, cap=60.0, jitter=0.2)
    delays = {jittered.delay(1, rand) for _ in range(50)}
    assert len(delays) > 1
    assert all(8.0 <= d <= 12.0 for d in delays)


def test_a_reconcile_can_ask_to_run_again_later() -> None:
    runs = 0

    async def reconcile(key: Key) -> float | None:
        nonlocal runs
        runs += 1
        return 0.001 if runs < 3 else None

    async def scenario() -> None:
        queue = WorkQueue(reconcile, debounce=0)
        queue.add(A)
        for _ in range(100):
            await asyncio.sleep(0.002)
            if runs == 3:
                break
        await queue.idle()
        assert queue.tracked() == 0

    asyncio.run(scenario())
    assert runs == 3


def test_forget_drops_a_waiting_key_and_its_failures() -> None:
    runs = 0

    async def reconcile(key: Key) -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("always")

    async def scenario() -> WorkQueue:
        queue = WorkQueue(reconcile, debounce=0, backoff=Backoff(base=3600, cap=3600))
        queue.add(A)
        await asyncio.sleep(0.01)
        await queue.idle()
        assert queue.failures(A) == 1
        queue.forget(A)
        queue.add(B, delay=3600)
        queue.forget(B)
        return queue

    queue = asyncio.run(scenario())
    assert runs == 1
    assert queue.tracked() == 0
    assert queue.depth() == 0


def test_depth_and_latency_are_reported() -> None:
    recorder = Recorder()

    async def reconcile(key: Key) -> None:
        return None

    async def scenario() -> None:
        queue = WorkQueue(reconcile, debounce=0.001, metrics=recorder)
        queue.add(A)
        queue.add(B)
        await asyncio.sleep(0.01)
        await queue.idle()

    asyncio.run(scenario())
    assert max(recorder.depths) == 2
    assert recorder.depths[-1] == 0
    assert len(recorder.latencies) == 2
    assert all(s >= 0 for s in recorder.latencies)


def test_close_cancels_what_waits() -> None:
    runs = 0

    async def reconcile(key: Key) -> None:
        nonlocal runs
        runs += 1

    async def scenario() -> None:
        queue = WorkQueue(reconcile)
        queue.add(A, delay=0.001)
        await queue.close()
        queue.add(B, delay=0)
        await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert runs == 0
