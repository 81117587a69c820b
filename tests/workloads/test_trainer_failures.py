"""The trainer as a real process when a run cannot succeed: a diverging loss, bad data, a
SIGTERM, output storage that is read-only or full, a termination log that cannot be written.
Each ends with its own reason, one `error:` line, a strict-JSON termination message and the
exit code the Job's pod failure policy acts on (2: never retry; 143: a retry resumes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.workloads.conftest import TrainerRun, TrainerRunner, trainer_environment

pytestmark = [pytest.mark.workloads]

# Plain SGD with momentum at the largest learning rate the CRD admits: NaN in the first epoch.
DIVERGING = ["--model", "mlp", "--hidden-units", "64", "--dataset", "builtin:digits"]
DIVERGING += ["--epochs", "3", "--lr", "10", "--optimizer", "sgd"]
SMALL = ["--model", "mlp", "--hidden-units", "16", "--dataset", "builtin:digits"]


def strict_json(text: str) -> dict[str, Any]:
    """json.loads that refuses NaN and Infinity, as the apiserver does."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    loaded: dict[str, Any] = json.loads(text, parse_constant=refuse)
    return loaded


def error_lines(run: TrainerRun) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.strip()]


def assert_failed(run: TrainerRun, reason: str, exit_code: int) -> dict[str, Any]:
    assert run.returncode == exit_code, run.stdout + run.stderr
    lines = error_lines(run)
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    message = strict_json(run.termination_log.read_text())
    assert message["phase"] == "Failed" and message["reason"] == reason, message
    assert lines[0] == f"error: {message['message']}"
    return message


def test_diverging_run_fails_as_training_diverged_naming_epoch_and_value(
    tmp_path: Path, trainer_runner: TrainerRunner
) -> None:
    run = trainer_runner(tmp_path / "artifact", *DIVERGING)
    message = assert_failed(run, "TrainingDiverged", 2)
    assert re.search(r"at epoch 1: the training loss is nan", message["message"]), message
    assert "--lr" in message["message"]
    assert not (run.output / "manifest.json").exists()
    # the diverged epoch is never the checkpoint a retry would resume from
    assert not list((run.output / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ("inf", "class numbers"),
        ("1e20", "too large"),
        ("1e9", "too large"),
    ],
)
def test_absurd_labels_are_dataset_invalid_with_exit_2(
    tmp_path: Path, trainer_runner: TrainerRunner, labels: str, expected: str
) -> None:
    rows = [f"{i % 7},{i % 3},{i % 2}" for i in range(199)] + [f"1,2,{labels}"]
    data = tmp_path / "data.csv"
    data.write_text("\n".join(rows) + "\n")
    run = trainer_runner(tmp_path / "artifact", "--model", "mlp", "--dataset", str(data))
    message = assert_failed(run, "DatasetInvalid", 2)
    assert expected in message["message"]


def test_corrupt_npz_is_dataset_invalid_with_exit_2(
    tmp_path: Path, trainer_runner: TrainerRunner
) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((40, 3)), y=np.arange(40) % 2)
    corrupt = tmp_path / "data.npz"
    content = good.read_bytes()
    corrupt.write_bytes(content[: len(content) // 2])  # a copy cut short
    run = trainer_runner(tmp_path / "artifact", "--model", "mlp", "--dataset", str(corrupt))
    message = assert_failed(run, "DatasetInvalid", 2)
    assert "not a readable NPZ file" in message["message"]


def test_class_missing_from_the_data_is_refused(
    tmp_path: Path, trainer_runner: TrainerRunner
) -> None:
    rows = [f"{i % 5},{i % 3},{2 * (i % 2)}" for i in range(60)]  # classes 0 and 2, never 1
    data = tmp_path / "data.csv"
    data.write_text("\n".join(rows) + "\n")
    run = trainer_runner(tmp_path / "artifact", "--model", "mlp", "--dataset", str(data))
    message = assert_failed(run, "DatasetInvalid", 2)
    assert "skip class 1" in message["message"]


def test_sigterm_leaves_a_resumable_checkpoint_and_an_interrupted_message(
    tmp_path: Path, trainer_runner: TrainerRunner
) -> None:
    output = tmp_path / "artifact"
    termination_log = tmp_path / "artifact.termination.json"
    flags = [*SMALL, "--epochs", "200", "--export", "onnx"]
    command = [sys.executable, "-m", "fogline.workloads.trainer", "--output", str(output)]
    command += ["--threads", "1", "--termination-log", str(termination_log), *flags]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=trainer_environment(),
        cwd=tmp_path,
    )
    assert process.stdout is not None and process.stderr is not None
    for line in process.stdout:  # the epoch line is logged after its checkpoint is saved
        if " epoch 1/" in line:
            process.send_signal(signal.SIGTERM)
            break
    stdout, stderr = process.communicate(timeout=60)
    run = TrainerRun(process.returncode, stdout, stderr, output, termination_log)
    message = assert_failed(run, "Interrupted", 143)
    assert "SIGTERM" in message["message"]
    checkpoints = sorted(p.name for p in (output / "checkpoints").iterdir())
    assert checkpoints and all(name.endswith(".pt") for name in checkpoints), checkpoints

    resumed = trainer_runner(output, *SMALL, "--epochs", str(int(checkpoints[-1][6:11]) + 1))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint at epoch" in resumed.stdout


def test_full_output_storage_is_output_full_and_leaves_no_partial_checkpoint(
    tmp_path: Path, trainer_runner: TrainerRunner
) -> None:
    output = tmp_path / "artifact"
    (output / "checkpoints").mkdir(parents=True)
    # The first checkpoint's temporary file is the kernel's always-full device.
    (output / "checkpoints" / "epoch-00001.partial").symlink_to("/dev/full")
    run = trainer_runner(output, *SMALL, "--epochs", "2")
    message = assert_failed(run, "OutputFull", 2)
    assert str(output) in message["message"]
    assert not list((output / "checkpoints").iterdir())


def test_output_that_cannot_be_created_is_output_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    termination_log = tmp_path / "termination-log"
    command = [sys.executable, "-m", "fogline.workloads.trainer", *SMALL, "--epochs", "1"]
    command += ["--output", str(blocker / "artifact"), "--threads", "1"]
    command += ["--termination-log", str(termination_log)]
    done = subprocess.run(
        command, capture_output=True, text=True, env=trainer_environment(), check=False
    )
    run = TrainerRun(done.returncode, done.stdout, done.stderr, blocker, termination_log)
    message = assert_failed(run, "OutputNotWritable", 2)
    assert str(blocker / "artifact") in message["message"]


def test_explicit_termination_log_that_cannot_be_written_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    command = [sys.executable, "-m", "fogline.workloads.trainer", *SMALL, "--epochs", "1"]
    command += ["--output", str(tmp_path / "artifact")]
    command += ["--termination-log", str(blocker / "termination-log")]
    done = subprocess.run(
        command, capture_output=True, text=True, env=trainer_environment(), check=False
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: termination log"), done.stderr
    assert not (tmp_path / "artifact").exists()  # refused before any training


def test_environment_termination_log_that_cannot_be_written_is_an_error(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "fogline.workloads.trainer", *SMALL, "--epochs", "1"]
    command += ["--output", str(tmp_path / "artifact")]
    env = trainer_environment({"FOGLINE_TERMINATION_LOG": os.devnull + "/termination-log"})
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: termination log"), done.stderr
