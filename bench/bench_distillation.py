"""Distillation on the digits, seeded and side by side: for each seed a CNN-128 teacher is
trained on the seed's split, then the same small MLP student is trained twice at equal
epochs, on the labels alone and distilled from the teacher, and both held-out accuracies
(ONNX Runtime, from the exported files) are printed with their difference. Every run is the
real trainer process.

Run: python bench/bench_distillation.py [--seeds N] [--teacher-epochs N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# (hidden units, epochs, learning rate) of the student
STUDENTS = ((8, 10, 0.01), (16, 5, 0.01), (16, 10, 0.003))
DISTILL = (("4", "0.5"), ("2", "0.5"))  # (temperature, weight)


def train(folder: Path, *flags: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator"), "OMP_NUM_THREADS": "1"}
    log = folder.with_suffix(".json")
    command = [
        sys.executable,
        "-m",
        "fogline.workloads.trainer",
        "--output",
        str(folder),
        "--termination-log",
        str(log),
        "--threads",
        "1",
        "--dataset",
        "builtin:digits",
        *flags,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"trainer failed: {done.stderr.strip()}")
    message: dict[str, Any] = json.loads(log.read_text())
    return message


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--teacher-epochs", type=int, default=15)
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for seed in range(args.seeds):
            teacher = root / f"teacher-{seed}"
            done = train(
                teacher, "--model", "cnn", "--epochs", str(args.teacher_epochs), "--seed", str(seed)
            )
            digest = str(done["artifact"]["digest"])
            teacher_accuracy = float(done["metrics"]["accuracy"])
            print(f"seed {seed}: teacher CNN-128 accuracy {teacher_accuracy:.4f}")
            for hidden, epochs, lr in STUDENTS:
                common = [
                    "--model",
                    "mlp",
                    "--hidden-units",
                    str(hidden),
                    "--epochs",
                    str(epochs),
                    "--lr",
                    str(lr),
                    "--seed",
                    str(seed),
                ]
                plain = train(root / f"plain-{seed}-{hidden}-{epochs}-{lr}", *common)
                base = float(plain["metrics"]["accuracy"])
                for temperature, weight in DISTILL:
                    name = f"MLP-{hidden} {epochs} epochs lr {lr}, T {temperature} w {weight}"
                    distilled = train(
                        root / f"kd-{seed}-{hidden}-{epochs}-{lr}-{temperature}",
                        *common,
                        "--teacher",
                        str(teacher),
                        "--teacher-digest",
                        digest,
                        "--distill-temperature",
                        temperature,
                        "--distill-weight",
                        weight,
                    )
                    value = float(distilled["metrics"]["accuracy"])
                    rows.setdefault(name, []).append((base, value))
    print(f"\n{'student':<42}{'labels only':>12}{'distilled':>11}{'Δ pts':>8}  per seed")
    for name, pairs in rows.items():
        base = sum(p[0] for p in pairs) / len(pairs)
        value = sum(p[1] for p in pairs) / len(pairs)
        seeds = " ".join(f"{p[0]:.3f}/{p[1]:.3f}" for p in pairs)
        print(f"{name:<42}{base:>12.4f}{value:>11.4f}{(value - base) * 100:>+8.2f}  {seeds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
