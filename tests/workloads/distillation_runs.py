"""The seeded distillation comparison, run as one process: `python -m
tests.workloads.distillation_runs RESULT.json SEED...`. For each seed it trains a CNN-128
teacher on all training rows, then the same data-limited MLP-32 student twice at equal
epochs on the same rows (labels alone, and distilled from the teacher at the trainer's
defaults) and records the held-out accuracies the trainer reports. Each run is the trainer's
command line (`fogline.workloads.trainer.cli.main`); one process imports torch once."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fogline.workloads.trainer.cli import main as trainer_main

TEACHER = ("--model", "cnn", "--hidden-units", "128", "--epochs", "15")
# 5% of the training rows (72, about 7 a class), trained long enough to converge: the
# teacher learned from all of them, which is what its soft targets carry to the student.
STUDENT = ("--model", "mlp", "--hidden-units", "32", "--epochs", "60", "--lr", "0.01")
STUDENT_ROWS = ("--train-fraction", "0.05")


def train(folder: Path, *flags: str) -> dict[str, Any]:
    log = folder.with_suffix(".json")
    argv = ["--output", str(folder), "--termination-log", str(log), "--threads", "1"]
    code = trainer_main([*argv, "--dataset", "builtin:digits", "--device", "cpu", *flags])
    message: dict[str, Any] = json.loads(log.read_text())
    if code != 0:
        raise SystemExit(f"{folder.name}: the trainer failed: {message}")
    return message


def compare(root: Path, seed: int) -> dict[str, Any]:
    teacher = train(root / f"teacher-{seed}", *TEACHER, "--seed", str(seed))
    digest = str(teacher["artifact"]["digest"])
    student = (*STUDENT, *STUDENT_ROWS, "--seed", str(seed))
    plain = train(root / f"plain-{seed}", *student)
    distilled = train(
        root / f"distilled-{seed}",
        *student,
        *("--teacher", str(root / f"teacher-{seed}"), "--teacher-digest", digest),
    )
    return {
        "seed": seed,
        "teacher": teacher["metrics"]["accuracy"],
        "labelsOnly": plain["metrics"]["accuracy"],
        "distilled": distilled["metrics"]["accuracy"],
        "epochs": [plain["epochs"], distilled["epochs"]],
    }


def main(argv: list[str]) -> int:
    result, seeds = Path(argv[0]), [int(seed) for seed in argv[1:]]
    rows = [compare(result.parent, seed) for seed in seeds]
    result.write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
