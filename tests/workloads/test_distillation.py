"""Distillation in the trainer: the teacher is verified against its digest before any
training, its soft targets blend into the student's loss as the formula says, a distilled
run records its teacher in the manifest, and on the digits a data-limited student distilled
from a CNN beats its labels-only twin at equal epochs, seeded, over several seeds."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fogline.workloads.trainer.distillation.teacher import SoftTargets
from tests.workloads.conftest import REPO, TrainerRun, TrainerRunner, trainer_environment

pytestmark = [pytest.mark.workloads]

# Three seeds, each its own split, teacher and pair of students: a mean over seeds, never
# one lucky seed. bench/bench_distillation.py runs more seeds and students.
COMPARISON_SEEDS = ("0", "1", "2")


def test_the_loss_blends_labels_and_softened_teacher_outputs() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10, requires_grad=True), torch.randn(8, 10) * 3
    labels, rows = torch.randint(0, 10, (8,)), torch.arange(8)
    ce = nn.functional.cross_entropy(student, labels)
    assert torch.allclose(SoftTargets(teacher, 4.0, 0.0).loss(student, labels, rows), ce)
    t = 4.0
    p_teacher = torch.softmax(teacher / t, dim=1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(student / t, dim=1))).sum(1).mean()
    blended = SoftTargets(teacher, t, 0.7).loss(student, labels, rows)
    assert torch.allclose(blended, 0.3 * ce + 0.7 * t * t * kl, atol=1e-6)
    # A student that already matches the teacher has nothing left to learn from it.
    same = SoftTargets(teacher, t, 1.0).loss(teacher.clone(), labels, rows)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    # The soft targets are looked up by training row, not by position in the batch.
    shuffled = torch.tensor([3, 1, 0, 2, 7, 6, 5, 4])
    moved = SoftTargets(teacher, t, 1.0).loss(teacher[shuffled], labels, shuffled)
    assert float(moved) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, trainer_runner: TrainerRunner) -> TrainerRun:
    output = tmp_path_factory.mktemp("teacher") / "artifact"
    flags = ["--model", "mlp", "--hidden-units", "64", "--dataset", "builtin:digits"]
    run = trainer_runner(output, *flags, "--epochs", "3")
    assert run.returncode == 0, run.stderr
    return run


def test_a_distilled_student_records_its_verified_teacher(
    teacher: TrainerRun, tmp_path: Path, trainer_runner: TrainerRunner
) -> None:
    digest = teacher.termination["artifact"]["digest"]
    flags = [
        "--model",
        "mlp",
        "--hidden-units",
        "8",
        "--dataset",
        "builtin:digits",
        "--epochs",
        "2",
    ]
    run = trainer_runner(
        tmp_path / "student",
        *flags,
        "--teacher",
        str(teacher.output),
        "--teacher-digest",
        digest,
        "--distill-temperature",
        "3",
        "--distill-weight",
        "0.6",
    )
    assert run.returncode == 0, run.stderr
    assert run.manifest["hyperparameters"]["distillation"] == {
        "teacher": str(teacher.output),
        "teacherDigest": digest,
        "temperature": 3.0,
        "weight": 0.6,
    }
    plain = trainer_runner(tmp_path / "plain", *flags)
    assert plain.returncode == 0, plain.stderr
    # Same seed, same batches: only the teacher's targets can make the losses differ.
    assert run.termination["metrics"]["train_loss"] != plain.termination["metrics"]["train_loss"]


def test_a_teacher_that_differs_from_its_digest_is_refused_before_training(
    teacher: TrainerRun, tmp_path: Path, trainer_runner: TrainerRunner
) -> None:
    run = trainer_runner(
        tmp_path / "student",
        "--model",
        "mlp",
        "--dataset",
        "builtin:digits",
        "--epochs",
        "1",
        "--teacher",
        str(teacher.output / "model.onnx"),
        "--teacher-digest",
        "sha256:" + "0" * 64,
    )
    assert run.returncode == 2
    assert run.termination["reason"] == "TeacherDigestMismatch"
    assert "not --teacher-digest sha256:000" in run.termination["message"]
    assert run.epoch_lines() == []


def test_a_teacher_without_a_digest_is_refused_as_bad_input(
    teacher: TrainerRun, tmp_path: Path, trainer_runner: TrainerRunner
) -> None:
    run = trainer_runner(
        tmp_path / "student",
        "--model",
        "mlp",
        "--dataset",
        "builtin:digits",
        "--teacher",
        str(teacher.output),
    )
    assert run.returncode == 2
    assert run.termination["reason"] == "InvalidArgument"
    assert "--teacher needs --teacher-digest" in run.termination["message"]


def test_a_distilled_student_beats_its_labels_only_twin_on_every_seed(tmp_path: Path) -> None:
    """MLP-32 on 5% of the digits' training rows, 60 epochs, with and without a CNN-128
    teacher trained on all of them; both scored by the trainer on the held-out rows neither
    the teacher nor the students trained on."""
    result = tmp_path / "comparison.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.workloads.distillation_runs", str(result), *COMPARISON_SEEDS],
        capture_output=True,
        text=True,
        env=trainer_environment({"PYTHONPATH": f"{REPO / 'operator'}:{REPO}"}),
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(result.read_text())
    table = "; ".join(
        f"seed {r['seed']}: teacher {r['teacher']:.4f}, labels only {r['labelsOnly']:.4f}, "
        f"distilled {r['distilled']:.4f}"
        for r in rows
    )
    assert all(r["teacher"] >= 0.95 for r in rows), table  # a real, larger teacher
    assert all(r["epochs"][0] == r["epochs"][1] == 60 for r in rows), table
    gains = [r["distilled"] - r["labelsOnly"] for r in rows]
    assert all(gain > 0 for gain in gains), table
    assert statistics.fmean(gains) >= 0.03, table
