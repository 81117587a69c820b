"""`fogline demo` end to end, non-interactively, as `make demo` runs it: a real training on
the local GPU node, a first deployment to three sites of real edge servers, a second training
rolled out wave by wave with each wave's analysis passing, a bad model rolled back by the
canary's analysis, and a real inference on the local edge node."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fogline.api.digests import short_digest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_demo_trains_rolls_out_in_gated_waves_rolls_back_a_bad_model_and_serves(
    tmp_path: Path,
) -> None:
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
    retraining, second, bad = summary["retraining"], summary["second_rollout"], summary["bad_model"]
    for run in (training, retraining):
        assert run["phase"] == "Succeeded"
        assert run["accuracy"] >= run["threshold"] >= 0.9
        assert run["digestShort"] == short_digest(run["digest"])  # from status, as kubectl shows
    assert retraining["epochs"] > training["epochs"] and retraining["digest"] != training["digest"]
    assert rollout["phase"] == "Available" and rollout["digest"] == training["digest"]
    # The second training: the canary, then the other two sites, each wave's analysis passed.
    assert second["phase"] == "Available" and second["currentDigest"] == retraining["digest"]
    assert [w["wave"] for w in second["waves"]] == [0, 1]
    assert all(w["phase"] == "Passed" and w["requests"] >= 20 for w in second["waves"])
    for report in (rollout, second):
        ready, total = report["sitesReady"].split("/")
        assert ready == total == "3"
        assert all(s["state"] == "Ready" and s["ready"] == s["desired"] for s in report["sites"])
    # The bad model: stopped at the canary by its error ratio, every site back on the second.
    assert bad["phase"] == "RolledBack" and bad["currentDigest"] == retraining["digest"]
    assert bad["failedSite"] == "site-01" == bad["failure"]["site"]
    assert bad["failure"]["metric"] == "errorRatio"
    assert bad["failure"]["value"] > bad["failure"]["threshold"]
    for report in (rollout, second, bad):
        assert report["currentDigestShort"] == short_digest(report["currentDigest"])
    assert summary["traffic"]["errors"] > 0 and summary["traffic"]["requests"] > 0
    # The digest the operator published is the sha256 of the very file the server loaded.
    assert inference["servedManifestSha256"] == retraining["digest"] == inference["servedDigest"]
    assert inference["node"] == "local-edge" and inference["correct"] is True
    assert "Digest check" in result.stdout
    assert not (tmp_path / "demo" / "cluster").exists()  # cleaned up after itself
