"""A two-process torchrun run of the trainer on the CPU (gloo): both ranks train, only rank 0
logs epochs and writes the one artifact and the termination message."""

from __future__ import annotations

import hashlib
import socket
import sys
from pathlib import Path

import pytest

from tests.workloads.conftest import TrainerRunner

pytestmark = [pytest.mark.workloads, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_two_process_torchrun_on_cpu_trains_and_writes_one_artifact(
    tmp_path: Path, trainer_runner: TrainerRunner
) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    output = tmp_path / "artifact"
    run = trainer_runner(
        output,
        "--model",
        "mlp",
        "--dataset",
        "builtin:digits",
        "--epochs",
        "3",
        "--device",
        "cpu",
        launcher=launcher,
    )
    assert run.returncode == 0, run.stderr
    assert "2 processes (gloo)" in run.stdout
    assert [line.split(" epoch ")[1].split()[0] for line in run.epoch_lines()] == [
        "1/3",
        "2/3",
        "3/3",
    ]
    assert sorted(p.name for p in output.iterdir()) == [
        "checkpoints",
        "manifest.json",
        "model.onnx",
    ]
    manifest = run.manifest
    assert manifest["training"]["processes"] == 2
    assert manifest["training"]["backend"] == "gloo"
    assert run.termination["phase"] == "Succeeded"
    manifest_bytes = (output / "manifest.json").read_bytes()
    assert run.termination["artifact"]["digest"] == (
        "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    )
