"""`fogline demo` end to end, non-interactively, as `make demo` runs it: a real training on
the local GPU node, a real rollout, a real inference on the local edge node."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_demo_trains_rolls_out_and_serves_for_real(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fogline.cli",
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            "--summary",
            str(summary_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    summary = json.loads(summary_path.read_text())
    training, rollout, inference = summary["training"], summary["rollout"], summary["inference"]
    assert training["phase"] == "Succeeded"
    assert training["accuracy"] >= training["threshold"] >= 0.9
    # The digest the operator published is the sha256 of the very file the server loaded.
    assert inference["servedManifestSha256"] == training["digest"] == inference["servedDigest"]
    assert rollout["phase"] == "Available" and rollout["digest"] == training["digest"]
    ready, total = rollout["sitesReady"].split("/")
    assert ready == total == "3"
    assert all(
        site["state"] == "Ready" and site["ready"] == site["desired"] for site in rollout["sites"]
    )
    assert inference["node"] == "local-edge" and inference["correct"] is True
    assert "Digest check" in result.stdout
    assert not (tmp_path / "demo" / "cluster").exists()  # cleaned up after itself
