"""Every compression method on the MLP and the CNN trained on the digits, against the float32
model of the same run: size ratio, accuracy delta on the held-out split (recomputed from each
file) and latency ratio at batch 1 and 64 (ONNX Runtime, CPU, one thread). The files are
built by the trainer's own code; latencies are measured side by side, interleaved over a few
rounds, and each file's best median is kept so that a burst of load elsewhere on the machine
hurts no method more than another. Ends with the issue's targets, met or not, and what the
selection serves with no budget at each batch size.

Run: python bench/bench_compression.py [--epochs N] [--rounds N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from fogline.workloads.trainer.architectures import build_model
from fogline.workloads.trainer.artifacts import ONNX_FILE
from fogline.workloads.trainer.compression.candidates import FILES, FineTuning, build
from fogline.workloads.trainer.compression.finetune import finetune
from fogline.workloads.trainer.compression.measure import latency_p50_ms
from fogline.workloads.trainer.compression.selection import (
    FLOAT32,
    INT8_STATIC,
    METHODS,
    WEIGHT_SHARING,
    Budget,
    Candidate,
    select,
)
from fogline.workloads.trainer.compression.settings import CompressionSettings
from fogline.workloads.trainer.datasets import Split, load_dataset, split_dataset
from fogline.workloads.trainer.evaluation import evaluate_onnx
from fogline.workloads.trainer.export import export_onnx

SEED = 0
HIDDEN = 128
BATCHES = (1, 64)
PER_CHANNEL = "int8-static per-channel"


def trained(name: str, split: Split, epochs: int) -> nn.Module:
    torch.manual_seed(SEED)
    model = build_model(name, split.train_features, 10, HIDDEN)
    return finetune(model, split, epochs=epochs, batch_size=64, learning_rate=1e-3, seed=SEED)


def build_all(model: nn.Module, split: Split, folder: Path) -> dict[str, Path]:
    export_onnx(model, torch.as_tensor(split.validation_features[:2]), folder / ONNX_FILE, 17)
    tuning = FineTuning(batch_size=64, learning_rate=1e-3, seed=SEED)
    files = {FLOAT32: folder / ONNX_FILE}
    for method in METHODS[1:]:
        build(method, model, split, CompressionSettings(), output=folder, opset=17, tuning=tuning)
        files[method] = folder / FILES[method]
    per_channel = folder / "per-channel"
    per_channel.mkdir()
    (per_channel / ONNX_FILE).write_bytes(files[FLOAT32].read_bytes())
    settings = CompressionSettings(per_channel=True)
    build(INT8_STATIC, model, split, settings, output=per_channel, opset=17, tuning=tuning)
    files[PER_CHANNEL] = per_channel / FILES[INT8_STATIC]
    return files


def latencies(files: dict[str, Path], split: Split, rounds: int) -> dict[tuple[str, int], float]:
    best: dict[tuple[str, int], float] = {}
    for _ in range(rounds):
        for batch in BATCHES:
            for method, path in files.items():
                p50, _ = latency_p50_ms(
                    path, split.validation_features, batch_size=batch, threads=1
                )
                key = (method, batch)
                best[key] = min(best.get(key, p50), p50)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    split = split_dataset(load_dataset("builtin:digits"), 0.2, SEED)
    verdicts: list[tuple[str, bool, str]] = []
    for name in ("mlp", "cnn"):
        with tempfile.TemporaryDirectory() as scratch:
            files = build_all(trained(name, split, args.epochs), split, Path(scratch))
            sizes = {m: p.stat().st_size for m, p in files.items()}
            accuracy = {
                m: evaluate_onnx(p, split.validation_features, split.validation_labels).accuracy
                for m, p in files.items()
            }
            timing = latencies(files, split, args.rounds)
        print(f"\n{name.upper()}-{HIDDEN} on digits, {args.epochs} epochs, onnxruntime 1 thread")
        print(
            f"{'method':<26}{'size B':>10}{'size x':>8}{'acc':>8}{'Δ pts':>8}"
            f"{'b1 µs':>9}{'b1 x':>7}{'b64 µs':>10}{'b64 x':>7}"
        )
        for method in files:
            size_ratio = sizes[FLOAT32] / sizes[method]
            delta = (accuracy[method] - accuracy[FLOAT32]) * 100
            ratios = [timing[(FLOAT32, b)] / timing[(method, b)] for b in BATCHES]
            print(
                f"{method:<26}{sizes[method]:>10,}{size_ratio:>8.2f}{accuracy[method]:>8.4f}"
                f"{delta:>+8.2f}{timing[(method, 1)] * 1000:>9.1f}{ratios[0]:>7.2f}"
                f"{timing[(method, 64)] * 1000:>10.1f}{ratios[1]:>7.2f}"
            )
        for batch in BATCHES:
            table = [
                Candidate(m, p.name, sizes[m], accuracy[m], timing[(m, batch)])
                for m, p in files.items()
                if m in METHODS
            ]
            chosen = select(table, Budget(batch_size=batch)).chosen
            assert chosen is not None
            slower = timing[(chosen.method, batch)] / timing[(FLOAT32, batch)]
            print(
                f"no budget, batch {batch}: serves {chosen.method} "
                f"({slower:.2f}x the float latency)"
            )
        if name == "cnn":
            st = INT8_STATIC
            verdicts += [
                (
                    "static INT8 on the CNN >= 3.5x smaller",
                    sizes[FLOAT32] / sizes[st] >= 3.5,
                    f"{sizes[FLOAT32] / sizes[st]:.2f}x",
                ),
                (
                    "static INT8 on the CNN <= 1 point lost",
                    accuracy[FLOAT32] - accuracy[st] <= 0.01,
                    f"{(accuracy[st] - accuracy[FLOAT32]) * 100:+.2f} pts",
                ),
                (
                    "static INT8 on the CNN >= 1.3x faster at batch 64",
                    timing[(FLOAT32, 64)] / timing[(st, 64)] >= 1.3,
                    f"{timing[(FLOAT32, 64)] / timing[(st, 64)]:.2f}x",
                ),
            ]
        ws = WEIGHT_SHARING
        verdicts += [
            (
                f"weight sharing 4 bits on the {name.upper()} >= 6x smaller",
                sizes[FLOAT32] / sizes[ws] >= 6,
                f"{sizes[FLOAT32] / sizes[ws]:.2f}x",
            ),
            (
                f"weight sharing 4 bits on the {name.upper()} <= 1 point lost",
                accuracy[FLOAT32] - accuracy[ws] <= 0.01,
                f"{(accuracy[ws] - accuracy[FLOAT32]) * 100:+.2f} pts",
            ),
        ]
    print("\ntargets")
    for what, met, value in verdicts:
        print(f"  {'met    ' if met else 'NOT MET'}  {what}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
