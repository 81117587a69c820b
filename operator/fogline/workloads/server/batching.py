"""Runs the model off the event loop: one worker thread takes every request waiting in the queue
and, when shapes allow, merges them along the batch axis into one onnxruntime call. A lone
request runs at once (no waiting window), so merging adds no latency. A lone request on a model
that answers within INLINE_SECONDS runs right on the event loop instead: the two thread
hand-offs would cost more than the run. Never parses HTTP."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fogline.workloads.server.errors import InferenceError, InferenceFailedError, OverloadedError
from fogline.workloads.server.model import OnnxModel

log = logging.getLogger(__name__)
# A run this short blocks the event loop for less than a health probe's own handling takes.
INLINE_SECONDS = 0.0002
Outputs = list[np.ndarray[Any, Any]]
BatchObserver = Callable[[float, int], None]


@dataclass(eq=False)  # identity: the queue removes a cancelled job by itself
class _Job:
    feeds: dict[str, np.ndarray[Any, Any]]
    rows: int
    # Requests merge only when every input agrees on everything but the batch axis.
    key: tuple[tuple[str, tuple[int, ...], str], ...]
    future: asyncio.Future[Outputs]


class InferenceRunner:
    """Owns the worker thread; `submit` is called on the event loop and returns a future."""

    def __init__(
        self,
        model: OnnxModel,
        loop: asyncio.AbstractEventLoop,
        max_batch_size: int = 32,
        observe_batch: BatchObserver | None = None,
        max_queue: int = 256,
        on_rejected: Callable[[], None] | None = None,
        on_cancelled: Callable[[], None] | None = None,
        requests_in_flight: Callable[[], int] | None = None,
    ) -> None:
        self._model = model
        self._loop = loop
        self._max_rows = max(1, max_batch_size)
        self._observe = observe_batch
        self._max_queue = max(1, max_queue)
        self._on_rejected = on_rejected or (lambda: None)
        self._on_cancelled = on_cancelled or (lambda: None)
        # Requests the server holds in all: a run on the loop is worth it only for a lone one
        # (under load the loop has decoding to do while the worker computes).
        self._in_flight = requests_in_flight or (lambda: 1)
        self._queue: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._busy = False  # the worker is running a batch
        # Seconds of the latest single-request run; unknown (inf) sends the first to the worker.
        self._last_run = float("inf")
        self._last_rows = 0  # rows of that run: a larger request is not assumed to be as quick
        self._thread = threading.Thread(target=self._work, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then end the worker thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def depth(self) -> int:
        """Requests waiting for the worker (not counting the run under way)."""
        return len(self._queue)

    def submit(self, feeds: dict[str, np.ndarray[Any, Any]]) -> asyncio.Future[Outputs]:
        """Queue a request; OverloadedError when the queue is full. Cancelling the returned
        future (its client went away) takes the request out of the queue if it still waits."""
        future: asyncio.Future[Outputs] = self._loop.create_future()
        batchable = self._model.batchable and self._max_rows > 1
        rows = next(iter(feeds.values())).shape[0] if batchable and feeds else 0
        key = (
            tuple((name, array.shape[1:], array.dtype.str) for name, array in feeds.items())
            if batchable
            else ()
        )
        with self._wake:
            if self._stopping:
                future.set_exception(InferenceFailedError("the server is shutting down"))
                return future
            size = next(iter(feeds.values())).shape[0] if feeds and feeds_have_rows(feeds) else 1
            inline = (
                self._in_flight() <= 1
                and not self._queue
                and not self._busy
                and self._last_run < INLINE_SECONDS
                and size <= self._last_rows
            )
            if len(self._queue) >= self._max_queue:
                self._on_rejected()
                raise OverloadedError(
                    f"{len(self._queue)} requests are waiting for the model (--max-queue); "
                    "retry later"
                )
            job = _Job(feeds, rows, key, future)
            if not inline:
                self._queue.append(job)
                self._wake.notify()
        if inline:
            result = self._run_one(job)
            if isinstance(result, InferenceError):
                future.set_exception(result)
            else:
                future.set_result(result)
            return future
        future.add_done_callback(lambda done: self._forget(job) if done.cancelled() else None)
        return future

    def _forget(self, job: _Job) -> None:
        with self._wake:
            try:
                self._queue.remove(job)
            except ValueError:
                return  # the worker has it already; _settle skips its answer
        self._on_cancelled()

    def _take(self) -> list[_Job] | None:
        """Block until work arrives; then the first job and every compatible one behind it."""
        with self._wake:
            while not self._queue:
                if self._stopping:
                    return None
                self._wake.wait()
            first = self._queue.popleft()
            self._busy = True
            jobs = [first]
            if not first.key or first.rows >= self._max_rows:
                return jobs
            rows = first.rows
            kept: deque[_Job] = deque()
            while self._queue:
                job = self._queue.popleft()
                if job.key == first.key and rows + job.rows <= self._max_rows:
                    jobs.append(job)
                    rows += job.rows
                else:
                    kept.append(job)
            self._queue.extendleft(reversed(kept))
            return jobs

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            results: list[Outputs | InferenceError]
            try:
                results = [self._run_one(jobs[0])] if len(jobs) == 1 else self._run_merged(jobs)
            except Exception as err:  # keep the worker alive: each waiting request gets the error
                log.exception("inference worker failed on a batch of %d requests", len(jobs))
                results = [InferenceFailedError(f"inference failed: {err}")] * len(jobs)
            with self._wake:
                self._busy = False
            self._loop.call_soon_threadsafe(_settle, list(zip(jobs, results, strict=True)))

    def _timed_predict(self, feeds: dict[str, np.ndarray[Any, Any]], rows: int) -> Outputs:
        started = time.perf_counter()
        outputs = self._model.predict(feeds)
        if self._observe is not None:
            self._observe(time.perf_counter() - started, rows)
        return outputs

    def _run_one(self, job: _Job) -> Outputs | InferenceError:
        rows = (
            next(iter(job.feeds.values())).shape[0]
            if job.feeds and feeds_have_rows(job.feeds)
            else 1
        )
        started = time.perf_counter()
        try:
            return self._timed_predict(job.feeds, rows)
        except InferenceError as err:
            return err
        finally:
            self._last_run, self._last_rows = time.perf_counter() - started, rows

    def _run_merged(self, jobs: list[_Job]) -> list[Outputs | InferenceError]:
        names = list(jobs[0].feeds)
        merged = {name: np.concatenate([job.feeds[name] for job in jobs]) for name in names}
        total = sum(job.rows for job in jobs)
        try:
            outputs = self._timed_predict(merged, total)
        except InferenceError:
            # One request's values may upset the graph; run them apart so only it fails.
            return [self._run_one(job) for job in jobs]
        results: list[Outputs | InferenceError] = []
        start = 0
        for job in jobs:
            end = start + job.rows
            results.append([output[start:end] for output in outputs])
            start = end
        return results


def feeds_have_rows(feeds: dict[str, np.ndarray[Any, Any]]) -> bool:
    return all(array.ndim > 0 for array in feeds.values())


def _settle(done: list[tuple[_Job, Outputs | InferenceError]]) -> None:
    for job, result in done:
        if job.future.done():  # the client went away and the request was cancelled
            continue
        if isinstance(result, InferenceError):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)
