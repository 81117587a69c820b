"""The fetch step against a loopback store of the tests' own that misbehaves: a cut download
resumes asking only for the rest, a stall times out and is retried, 503 with Retry-After is
waited out, a body longer than declared or a garbage status line never becomes a traceback,
and the node cache keeps what the setting allows, sweeps what a killed fetch left, and lets
several fetches of one digest run at once."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fogline.api.edgedeployment import EdgeDeployment
from fogline.edge.daemonsets import ModelRef, build_site_daemonset
from fogline.edge.status import next_history, rollback_targets
from fogline.settings import OperatorSettings
from fogline.workloads.fetch import _locked, main
from fogline.workloads.manifest import manifest_digest, verify_artifact
from tests.workloads.flaky_store import FlakyStore, Misbehaviour
from tests.workloads.served_artifacts import write_artifact

pytestmark = pytest.mark.workloads

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = "weights.bin"
WEIGHTS_SIZE = 4 << 20


def add_weights(folder: Path, size: int = WEIGHTS_SIZE, seed: int = 0) -> str:
    """Add an external-data file to the artifact in folder; returns the new digest."""
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32)
    (folder / WEIGHTS).write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][WEIGHTS] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "sizeBytes": len(data),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest_digest(manifest)


@pytest.fixture
def artifact(tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / "store"
    write_artifact(folder)
    return folder, add_weights(folder)


@pytest.fixture
def store(artifact: tuple[Path, str]) -> Iterator[FlakyStore]:
    server = FlakyStore(artifact[0])
    yield server
    server.stop()


def fetch(store_url: str, digest: str, root: Path, *extra: str) -> int:
    return main(
        [
            "--uri",
            store_url,
            "--digest",
            digest,
            "--cache-dir",
            str(root / "cache"),
            "--dest",
            str(root / "dest"),
            *extra,
        ],
        environ={"FOGLINE_TERMINATION_LOG": str(root / "termination-log")},
    )


def termination(root: Path) -> dict[str, str]:
    document: dict[str, str] = json.loads((root / "termination-log").read_text())
    return document


def test_download_cut_at_half_resumes_asking_only_for_the_rest(
    tmp_path: Path, artifact: tuple[Path, str], store: FlakyStore
) -> None:
    store.misbehaviours[WEIGHTS] = Misbehaviour(WEIGHTS, cut_at=WEIGHTS_SIZE // 2)
    assert fetch(store.url, artifact[1], tmp_path) == 0
    assert verify_artifact(tmp_path / "dest", artifact[1]).digest == artifact[1]
    first, second = store.requests_for(WEIGHTS)
    assert "range" not in first
    assert second["range"] == f"bytes={WEIGHTS_SIZE // 2}-"
    assert second["if-range"].startswith('"')  # the ETag of the first answer
    assert store.bytes_sent[WEIGHTS] == WEIGHTS_SIZE  # nothing was sent twice


def test_stalled_server_times_out_and_the_retry_resumes(
    tmp_path: Path, artifact: tuple[Path, str], store: FlakyStore
) -> None:
    store.misbehaviours[WEIGHTS] = Misbehaviour(WEIGHTS, stall_seconds=5)
    assert fetch(store.url, artifact[1], tmp_path, "--timeout", "1") == 0
    requests = store.requests_for(WEIGHTS)
    assert len(requests) == 2 and requests[1]["range"].startswith("bytes=")
    assert store.bytes_sent[WEIGHTS] == WEIGHTS_SIZE


def test_unavailable_store_is_waited_out_honouring_retry_after(
    tmp_path: Path, artifact: tuple[Path, str], store: FlakyStore
) -> None:
    store.misbehaviours["manifest.json"] = Misbehaviour("manifest.json", unavailable=2)
    assert fetch(store.url, artifact[1], tmp_path) == 0
    assert len(store.requests_for("manifest.json")) == 3


def test_body_longer_than_declared_is_refused_and_never_written_past_the_size(
    tmp_path: Path,
    artifact: tuple[Path, str],
    store: FlakyStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store.misbehaviours[WEIGHTS] = Misbehaviour(WEIGHTS, extra_bytes=8 << 20)
    assert fetch(store.url, artifact[1], tmp_path) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: DigestMismatch:") and "longer than" in err[-1]
    assert termination(tmp_path)["reason"] == "DigestMismatch"
    partial = tmp_path / "cache" / f".partial-{artifact[1].removeprefix('sha256:')}"
    assert not partial.exists()  # a refused body is not kept for resuming


def test_garbage_status_line_becomes_one_error_line_then_a_retry(
    tmp_path: Path,
    artifact: tuple[Path, str],
    store: FlakyStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store.misbehaviours["manifest.json"] = Misbehaviour("manifest.json", garbage=10)
    assert fetch(store.url, artifact[1], tmp_path, "--retries", "1") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ArtifactUnreachable:")
    assert termination(tmp_path)["reason"] == "ArtifactUnreachable"
    store.misbehaviours["manifest.json"].garbage = 1
    assert fetch(store.url, artifact[1], tmp_path) == 0  # one bad answer, then a good one


def test_a_drip_ends_at_the_overall_deadline(
    tmp_path: Path,
    artifact: tuple[Path, str],
    store: FlakyStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store.misbehaviours[WEIGHTS] = Misbehaviour(WEIGHTS, drip_delay=0.05)
    assert fetch(store.url, artifact[1], tmp_path, "--deadline", "2") == 1
    assert "overall deadline of 2 s passed" in capsys.readouterr().err
    assert store.bytes_sent[WEIGHTS] < 200  # a few seconds of drip, not the whole file


def test_symlinked_file_at_the_source_is_refused(
    tmp_path: Path, artifact: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, digest = artifact
    (folder / WEIGHTS).unlink()
    (folder / WEIGHTS).symlink_to("/dev/zero")
    assert fetch(str(folder), digest, tmp_path) == 1
    assert "symlink" in capsys.readouterr().err


def test_oversized_manifest_is_refused(
    tmp_path: Path, store: FlakyStore, artifact: tuple[Path, str]
) -> None:
    manifest = json.loads((artifact[0] / "manifest.json").read_text())
    manifest["padding"] = "x" * (2 << 20)
    (artifact[0] / "manifest.json").write_text(json.dumps(manifest))
    assert fetch(store.url, manifest_digest(manifest), tmp_path) == 1
    assert termination(tmp_path)["reason"] == "InvalidArtifact"


def test_eight_fetches_of_one_digest_at_once_all_succeed(
    tmp_path: Path, artifact: tuple[Path, str], store: FlakyStore
) -> None:
    _, digest = artifact
    assert fetch(store.url, digest, tmp_path) == 0
    entry = tmp_path / "cache" / f"sha256-{digest.removeprefix('sha256:')}"
    (entry / WEIGHTS).write_bytes(b"rotten")  # a damaged entry that all eight will repair
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fogline.workloads.fetch",
                "--uri",
                store.url,
                "--digest",
                digest,
                "--cache-dir",
                str(tmp_path / "cache"),
                "--dest",
                str(tmp_path / f"dest{index}"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for index in range(8)
    ]
    results = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0] * 8, [err[-400:] for _, err in results]
    assert verify_artifact(entry, digest).digest == digest
    assert list((tmp_path / "cache" / ".locks").iterdir()) == []  # each holder removed its lock


def test_cache_keeps_the_current_and_n_recent_digests_after_five_rollouts(
    tmp_path: Path,
) -> None:
    digests = []
    for rollout in range(5):
        folder = tmp_path / f"v{rollout}"
        write_artifact(folder, seed=rollout)
        digests.append(add_weights(folder, size=64 << 10, seed=rollout))
        assert fetch(str(folder), digests[-1], tmp_path, "--cache-keep", "2") == 0
        time.sleep(0.01)  # distinct mtimes on coarse clocks
    kept = sorted(p.name for p in (tmp_path / "cache").glob("sha256-*"))
    assert kept == sorted(f"sha256-{d.removeprefix('sha256:')}" for d in digests[-3:])


def test_after_five_rollouts_the_cache_holds_the_current_the_rollback_targets_and_others_pins(
    tmp_path: Path,
) -> None:
    """The fetch step as the operator builds it for each rollout of one EdgeDeployment, with
    the rollback targets of its status.history; another EdgeDeployment on the node fetched
    more recently than some of them, and its digest stays too (its pod restarts offline)."""
    settings = OperatorSettings(edge_cache_keep=2)
    cache = tmp_path / "node-cache"

    def run_fetch_step(name: str, folder: Path, digest: str, history: list[Any]) -> None:
        uri = f"file://{folder}"
        body = {"model": {"uri": uri, "digest": digest}}
        edge = EdgeDeployment.from_body(
            {"metadata": {"name": name, "namespace": "shop"}, "spec": body}
        )
        model = ModelRef(uri, digest, rollback_targets(history, digest, settings.edge_cache_keep))
        daemonset = build_site_daemonset(edge, "site-1", model, settings)
        (step,) = daemonset["spec"]["template"]["spec"]["initContainers"]
        args = [a for a in step["args"] if not a.startswith(("--cache-dir=", "--dest="))]
        assert main([*args, f"--cache-dir={cache}", f"--dest={tmp_path / name}"]) == 0

    history: list[Any] = []
    digests = []
    for rollout in range(5):
        folder = tmp_path / f"v{rollout}"
        write_artifact(folder, seed=rollout)
        digests.append(add_weights(folder, size=64 << 10, seed=rollout))
        if rollout == 4:  # meanwhile another EdgeDeployment's pod starts on the node
            write_artifact(tmp_path / "other", seed=9)
            other = add_weights(tmp_path / "other", size=1024, seed=9)
            run_fetch_step("other", tmp_path / "other", other, [])
        run_fetch_step("digits", folder, digests[-1], history)
        history = next_history(history, digests[-1], f"file://{folder}", 10, datetime.now(UTC))
    kept = {p.name.removeprefix("sha256-") for p in cache.glob("sha256-*")}
    assert kept == {d.removeprefix("sha256:") for d in [digests[4], digests[3], digests[2], other]}
    assert list((cache / ".locks").iterdir()) == []


def test_cache_size_bound_evicts_the_oldest_but_never_the_current(tmp_path: Path) -> None:
    digests = []
    for rollout in range(3):
        folder = tmp_path / f"v{rollout}"
        write_artifact(folder, seed=rollout)
        digests.append(add_weights(folder, size=256 << 10, seed=rollout))
        args = ["--cache-keep", "5", "--cache-max-bytes", str(600 << 10)]
        assert fetch(str(folder), digests[-1], tmp_path, *args) == 0
        time.sleep(0.01)
    kept = {p.name for p in (tmp_path / "cache").glob("sha256-*")}
    assert kept == {f"sha256-{d.removeprefix('sha256:')}" for d in digests[-2:]}


def test_partial_download_from_kill_9_is_swept_by_the_next_fetch(
    tmp_path: Path, artifact: tuple[Path, str], store: FlakyStore
) -> None:
    _, digest = artifact
    store.misbehaviours[WEIGHTS] = Misbehaviour(WEIGHTS, drip_delay=0.01)
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    killed = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fogline.workloads.fetch",
            "--uri",
            store.url,
            "--digest",
            digest,
            "--cache-dir",
            str(tmp_path / "cache"),
            "--dest",
            str(tmp_path / "never"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial = tmp_path / "cache" / f".partial-{digest.removeprefix('sha256:')}" / WEIGHTS
    deadline = time.monotonic() + 60
    while not partial.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=10)
    assert partial.exists()
    other = tmp_path / "other"
    write_artifact(other, seed=7)
    other_digest = add_weights(other, size=1024, seed=7)
    assert fetch(str(other), other_digest, tmp_path) == 0
    assert not partial.parent.exists()


def test_a_fetch_after_kill_9_resumes_the_partial(
    tmp_path: Path, artifact: tuple[Path, str], store: FlakyStore
) -> None:
    _, digest = artifact
    partial = tmp_path / "cache" / f".partial-{digest.removeprefix('sha256:')}"
    partial.mkdir(parents=True)
    data = (artifact[0] / WEIGHTS).read_bytes()
    (partial / WEIGHTS).write_bytes(data[: len(data) // 2])  # what a killed fetch left
    assert fetch(store.url, digest, tmp_path) == 0
    assert store.requests_for(WEIGHTS)[0]["range"] == f"bytes={len(data) // 2}-"
    assert store.bytes_sent[WEIGHTS] == len(data) - len(data) // 2


def test_proxy_from_the_environment_carries_the_fetch(
    tmp_path: Path,
    artifact: tuple[Path, str],
    store: FlakyStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY points at the store itself, which then sees absolute-form requests for a
    host that does not resolve; NO_PROXY for that host makes the same fetch fail."""
    monkeypatch.setenv("HTTP_PROXY", store.url)
    monkeypatch.setenv("NO_PROXY", "")
    assert fetch("http://artifacts.invalid", artifact[1], tmp_path) == 0
    paths = [path for path, _ in store.requests]
    assert paths[0] == "manifest.json"
    assert store.requests_for(WEIGHTS)
    monkeypatch.setenv("NO_PROXY", "artifacts.invalid")
    (tmp_path / "again").mkdir()
    args = ("--retries", "0", "--connect-timeout", "2")
    assert fetch("http://artifacts.invalid", artifact[1], tmp_path / "again", *args) == 1


def test_lock_files_are_removed_yet_holders_of_one_digest_never_overlap(tmp_path: Path) -> None:
    """Each holder removes its lock file on release while others wait on it: a waiter that
    locked the removed file must not go ahead beside one that locked the new file."""
    path = tmp_path / "digest.lock"
    inside: list[int] = []
    overlaps: list[int] = []

    def contend(worker: int) -> None:
        for _ in range(40):
            with _locked(path) as mine:
                assert mine
                inside.append(worker)
                if len(inside) > 1:
                    overlaps.append(worker)
                time.sleep(0.0005)
                inside.remove(worker)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert overlaps == []
    assert not path.exists()
