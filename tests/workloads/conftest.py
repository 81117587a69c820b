"""Fixtures for the workload tests: `trainer_runner` starts the trainer as a real process
(`python -m fogline.workloads.trainer`) with one CPU thread and returns what it produced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAINER_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class TrainerRun:
    returncode: int
    stdout: str
    stderr: str
    output: Path
    termination_log: Path

    @property
    def termination(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.termination_log.read_text())
        return loaded

    @property
    def manifest(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.output / "manifest.json").read_text())
        return loaded

    def epoch_lines(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if " epoch " in line]


def trainer_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "operator"), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["OMP_NUM_THREADS"] = "1"
    for name in ("POD_NAME", "RANK", "WORLD_SIZE", "LOCAL_RANK", "FOGLINE_TERMINATION_LOG"):
        env.pop(name, None)
    env.update(extra or {})
    return env


TrainerRunner = Callable[..., TrainerRun]


@pytest.fixture(scope="session")
def trainer_runner() -> TrainerRunner:
    """Runs the trainer to completion: runner(output, *flags, env=None, launcher=None)."""

    def run(
        output: Path,
        *flags: str,
        env: Mapping[str, str] | None = None,
        launcher: list[str] | None = None,
    ) -> TrainerRun:
        termination_log = output.parent / f"{output.name}.termination.json"
        termination_log.unlink(missing_ok=True)
        command = [
            *(launcher or [sys.executable]),
            "-m",
            "fogline.workloads.trainer",
            "--output",
            str(output),
            "--termination-log",
            str(termination_log),
            "--threads",
            "1",
            *flags,
        ]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=trainer_environment(env),
            cwd=output.parent,
            timeout=TRAINER_TIMEOUT_SECONDS,
            check=False,
        )
        return TrainerRun(done.returncode, done.stdout, done.stderr, output, termination_log)

    return run
