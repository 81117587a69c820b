"""Distillation on the digits, seeded and side by side: for each seed a CNN-128 teacher is
trained on the seed's training split, then each student is trained twice at equal epochs and
on the same rows, on the labels alone and distilled from the teacher (the trainer's default
temperature 4 and weight 0.7), and the held-out accuracies (ONNX Runtime, from the exported
files, on the same held-out rows the teacher never saw) are printed per seed with their mean
and spread. Every run is the trainer's own command line, in this process (one torch import),
writing and verifying real artifacts.

The students:
- trained for few epochs on all 1,437 rows: still far from converged, where the teacher's
  softer targets slow the fit and distillation loses;
- trained to convergence on all rows: the teacher fits its own training rows (train accuracy
  about 100%), so its soft targets there add little to the labels;
- data-limited, trained on 10% or 5% of the rows: the teacher learned from all of them, and
  its soft targets carry that knowledge to the student; this is where distillation is known
  to pay (Hinton et al., 2015) and where it does here.

Run: python bench/bench_distillation.py [--seeds N] [--teacher-epochs N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from fogline.workloads.trainer.cli import main as trainer_main  # noqa: E402

# name, hidden units, epochs, learning rate, share of the training rows
STUDENTS = (
    ("MLP-16, all rows, 10 epochs", 16, 10, 0.01, 1.0),
    ("MLP-8, all rows, 50 epochs", 8, 50, 0.01, 1.0),
    ("MLP-16, 10% of rows, 60 epochs", 16, 60, 0.01, 0.1),
    ("MLP-32, 5% of rows, 60 epochs", 32, 60, 0.01, 0.05),
)


def train(folder: Path, *flags: str) -> dict[str, Any]:
    log = folder.with_suffix(".json")
    argv = ["--output", str(folder), "--termination-log", str(log), "--threads", "1"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = trainer_main([*argv, "--dataset", "builtin:digits", "--device", "cpu", *flags])
    message: dict[str, Any] = json.loads(log.read_text())
    if code != 0:
        raise SystemExit(f"trainer failed: {message.get('message')}")
    return message


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean * 100:+.2f} ± {deviation * 100:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--teacher-epochs", type=int, default=15)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, *_ in STUDENTS}
    teachers: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for seed in range(args.seeds):
            teacher = root / f"teacher-{seed}"
            done = train(
                teacher, "--model", "cnn", "--epochs", str(args.teacher_epochs), "--seed", str(seed)
            )
            digest = str(done["artifact"]["digest"])
            teachers.append(float(done["metrics"]["accuracy"]))
            for index, (name, hidden, epochs, lr, fraction) in enumerate(STUDENTS):
                common = [
                    *("--model", "mlp", "--hidden-units", str(hidden), "--epochs", str(epochs)),
                    *("--lr", str(lr), "--train-fraction", str(fraction), "--seed", str(seed)),
                ]
                plain = train(root / f"plain-{seed}-{index}", *common)
                distilled = train(
                    root / f"kd-{seed}-{index}",
                    *common,
                    *("--teacher", str(teacher), "--teacher-digest", digest),
                )
                pair = (
                    float(plain["metrics"]["accuracy"]),
                    float(distilled["metrics"]["accuracy"]),
                )
                results[name].append(pair)
                print(f"seed {seed} {name}: {pair[0]:.4f} -> {pair[1]:.4f}", flush=True)
    print(
        f"\nteacher CNN-128, {args.teacher_epochs} epochs, all rows: accuracy "
        f"{statistics.fmean(teachers):.4f} (seeds {' '.join(f'{t:.3f}' for t in teachers)})"
    )
    print(f"students over {args.seeds} seeds, T 4, weight 0.7; Δ in points, mean ± stdev")
    print(f"{'student':<34}{'labels only':>12}{'distilled':>11}{'Δ pts':>16}  wins  per seed")
    for name, pairs in results.items():
        base = statistics.fmean(p[0] for p in pairs)
        value = statistics.fmean(p[1] for p in pairs)
        gains = [p[1] - p[0] for p in pairs]
        wins = sum(gain > 0 for gain in gains)
        seeds = " ".join(f"{p[0]:.3f}/{p[1]:.3f}" for p in pairs)
        print(
            f"{name:<34}{base:>12.4f}{value:>11.4f}{spread(gains):>16}  {wins}/{len(pairs)}  "
            f"{seeds}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
