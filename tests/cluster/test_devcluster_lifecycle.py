"""`fogline devcluster up|status|down` from the command line: up returns a healthy cluster
with its artifact stores, down stops every process it started and leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from fogline.devcluster.stores import ArtifactStores

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _fogline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fogline.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/status").read_text().count("State:\tZ")


def test_up_status_down_leaves_no_process_and_no_file(tmp_path: Path) -> None:
    folder = tmp_path / "dc"
    up = _fogline(
        "devcluster",
        "up",
        "--dir",
        str(folder),
        "--gpu-nodes",
        "1",
        "--edge-sites",
        "1",
        "--nodes-per-site",
        "1",
        "--json",
    )
    assert up.returncode == 0, up.stderr
    status = json.loads(up.stdout)
    assert status["running"] is True
    assert set(status["processes"]) == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    }
    assert (folder / "kubeconfig").exists()
    pids = json.loads((folder / "state.json").read_text())["pids"]
    # The artifact stores beside it: a bucket the writer can fill and the reader can read.
    endpoints = ArtifactStores(folder / "stores").read()
    assert endpoints is not None and status["stores"]["bucket"] == endpoints.bucket
    endpoints.s3_client().put_object(Bucket=endpoints.bucket, Key="probe", Body=b"ok")
    reply = endpoints.s3_client(reader=True).get_object(Bucket=endpoints.bucket, Key="probe")
    assert reply["Body"].read() == b"ok"
    with urllib.request.urlopen(f"http://{endpoints.registry}/v2/", timeout=10) as answer:
        assert answer.status == 200
    pids |= endpoints.pids

    assert _fogline("devcluster", "status", "--dir", str(folder)).returncode == 0

    down = _fogline("devcluster", "down", "--dir", str(folder))
    assert down.returncode == 0, down.stderr
    assert not folder.exists()
    assert [name for name, pid in pids.items() if _alive(pid)] == []
    assert _fogline("devcluster", "status", "--dir", str(folder)).returncode == 3
