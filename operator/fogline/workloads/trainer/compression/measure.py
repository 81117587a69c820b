"""Measures a candidate file the way an edge node runs it: its size on disk, the gate's metric
on the held-out split recomputed from the file, and the median latency of one inference
with ONNX Runtime on the CPU at a given batch size and thread count."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fogline.workloads.trainer.evaluation import evaluate_onnx

WARMUP_RUNS = 10
# Enough runs for a stable median on a busy machine, bounded so a slow model stays cheap:
# at least MIN_RUNS, then more until MIN_SECONDS have passed, at most MAX_RUNS.
MIN_RUNS = 50
MAX_RUNS = 2000
MIN_SECONDS = 0.2
#: Candidates are timed in this many interleaved rounds and each keeps its best median, so
#: a burst of load elsewhere on the machine slows no candidate more than another.
ROUNDS = 3


@dataclass(frozen=True)
class Measurement:
    size_bytes: int
    accuracy: float
    loss: float
    latency_ms: float
    latency_runs: int


def latency_p50_ms(
    path: Path, features: np.ndarray, *, batch_size: int, threads: int, min_runs: int = MIN_RUNS
) -> tuple[float, int]:
    """Median wall time of session.run over one batch of `batch_size` rows, in milliseconds,
    and the number of timed runs. Rows are repeated when the sample is smaller."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = np.resize(features.astype(np.float32), (batch_size, features.shape[1]))
    feed = {name: np.ascontiguousarray(rows)}
    for _ in range(WARMUP_RUNS):
        session.run(None, feed)
    timings: list[float] = []
    started = time.perf_counter()
    while len(timings) < MAX_RUNS and (
        len(timings) < min_runs or time.perf_counter() - started < MIN_SECONDS
    ):
        before = time.perf_counter()
        session.run(None, feed)
        timings.append(time.perf_counter() - before)
    return float(np.median(timings)) * 1000.0, len(timings)


def accuracy_and_size(path: Path, features: np.ndarray, labels: np.ndarray) -> Measurement:
    """Size and metric of a file; latency is left at 0 for `interleaved_latencies`."""
    score = evaluate_onnx(path, features, labels)
    return Measurement(path.stat().st_size, score.accuracy, score.loss, 0.0, 0)


def interleaved_latencies(
    paths: list[Path], features: np.ndarray, *, batch_size: int, threads: int, rounds: int = ROUNDS
) -> list[tuple[float, int]]:
    """Each file's best latency p50 over `rounds` rounds that time every file in turn, and
    the number of timed runs behind it."""
    best: list[tuple[float, int]] = [(float("inf"), 0)] * len(paths)
    for _ in range(rounds):
        for index, path in enumerate(paths):
            timed = latency_p50_ms(path, features, batch_size=batch_size, threads=threads)
            best[index] = min(best[index], timed)
    return best
