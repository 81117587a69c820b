"""Checkpoints and resume with the trainer as a real process: a rerun with more epochs and a
run killed with SIGKILL both continue from the newest checkpoint without repeating epochs."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.workloads.conftest import TrainerRunner, trainer_environment

pytestmark = [pytest.mark.workloads, pytest.mark.slow]

EPOCH = re.compile(r" epoch (\d+)/(\d+) ")
RESUMED = re.compile(r"resuming from checkpoint at epoch (\d+)")

USER_MODEL = textwrap.dedent(
    """
    from torch import nn

    def small_net(in_features: int, num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, num_classes))
    """
)


def epochs_logged(stdout: str) -> list[int]:
    return [int(match.group(1)) for match in EPOCH.finditer(stdout)]


@pytest.fixture
def csv_dataset_and_user_model(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(240, 6))
    labels = (features[:, 0] + features[:, 1] > 0).astype(int)
    table = np.column_stack([features, labels])
    header = ",".join([f"f{i}" for i in range(6)] + ["label"])
    path = tmp_path / "points.csv"
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt="%.5f")
    (tmp_path / "user_models.py").write_text(USER_MODEL)
    return path, {"PYTHONPATH": str(tmp_path)}


def test_rerun_with_more_epochs_resumes_a_user_model_on_csv_from_its_checkpoint(
    tmp_path: Path,
    trainer_runner: TrainerRunner,
    csv_dataset_and_user_model: tuple[Path, dict[str, str]],
) -> None:
    dataset, env = csv_dataset_and_user_model
    flags = ["--model", "user_models:small_net", "--dataset", str(dataset), "--batch-size", "32"]
    output = tmp_path / "artifact"
    first = trainer_runner(output, *flags, "--epochs", "2", env=trainer_environment(env))
    assert first.returncode == 0, first.stderr
    assert epochs_logged(first.stdout) == [1, 2]

    second = trainer_runner(output, *flags, "--epochs", "4", env=trainer_environment(env))
    assert second.returncode == 0, second.stderr
    resumed = RESUMED.search(second.stdout)
    assert resumed is not None and resumed.group(1) == "2", second.stdout
    assert epochs_logged(second.stdout) == [3, 4]
    manifest = second.manifest
    assert manifest["epochs"] == 4
    assert manifest["training"]["resumedFromEpoch"] == 2
    assert manifest["hyperparameters"]["model"] == "user_models:small_net"
    assert manifest["dataset"]["format"] == "csv"
    assert manifest["serving"]["inputs"][0]["shape"] == [-1, 6]
    assert second.termination["epochs"] == 4
    checkpoints = sorted(p.name for p in (output / "checkpoints").iterdir())
    assert checkpoints == ["epoch-00003.pt", "epoch-00004.pt"]


def test_checkpoints_of_another_configuration_are_refused(
    tmp_path: Path,
    trainer_runner: TrainerRunner,
    csv_dataset_and_user_model: tuple[Path, dict[str, str]],
) -> None:
    dataset, env = csv_dataset_and_user_model
    flags = ["--model", "user_models:small_net", "--dataset", str(dataset), "--epochs", "1"]
    output = tmp_path / "artifact"
    assert trainer_runner(output, *flags, env=trainer_environment(env)).returncode == 0
    changed = trainer_runner(output, *flags, "--lr", "0.01", env=trainer_environment(env))
    assert changed.returncode == 2
    assert changed.termination["reason"] == "CheckpointMismatch"
    assert changed.stderr.startswith("error: --output")


def test_run_killed_after_an_epoch_resumes_without_repeating_finished_epochs(
    tmp_path: Path, trainer_runner: TrainerRunner
) -> None:
    output = tmp_path / "artifact"
    flags = ["--model", "mlp", "--hidden-units", "32", "--dataset", "builtin:digits"]
    flags += ["--epochs", "40", "--export", "onnx"]
    command = [sys.executable, "-m", "fogline.workloads.trainer", "--output", str(output)]
    command += ["--threads", "1", "--termination-log", str(tmp_path / "t1"), *flags]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env=trainer_environment(), cwd=tmp_path
    )
    assert process.stdout is not None
    seen: list[int] = []
    for line in process.stdout:  # the epoch line is logged after its checkpoint is saved
        seen += epochs_logged(line)
        if seen:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert seen == [1]
    assert not (output / "manifest.json").exists()

    retried = trainer_runner(output, *flags)
    assert retried.returncode == 0, retried.stderr
    resumed = RESUMED.search(retried.stdout)
    assert resumed is not None, retried.stdout
    start = int(resumed.group(1))
    assert start >= 1  # at least the epoch it announced; maybe one more saved before the kill
    assert epochs_logged(retried.stdout) == list(range(start + 1, 41))
    assert retried.manifest["epochs"] == 40
