"""The artifact fetch step against real sources: folders on disk and under a PVC root, and an
HTTP server on loopback that can be taken away to prove that a cache hit needs no network."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fogline.workloads.fetch import main
from fogline.workloads.manifest import verify_artifact
from tests.workloads.served_artifacts import write_artifact

pytestmark = pytest.mark.workloads

REPO = Path(__file__).resolve().parents[2]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean."""


class FileServer:
    """Serves a folder over HTTP on a free loopback port until stopped."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, str]:
    """An artifact folder and its digest."""
    folder = tmp_path / "published" / "digits-v1"
    return folder, write_artifact(folder)


@pytest.fixture
def file_server(published: tuple[Path, str]) -> Iterator[FileServer]:
    server = FileServer(published[0].parent)
    yield server
    server.stop()


def cache_contents(cache: Path) -> list[str]:
    """Entries and partial downloads; the per-digest lock files do not count."""
    return sorted(p.name for p in cache.iterdir() if p.name != ".locks")


def fetch(uri: str, digest: str, cache: Path, dest: Path, *extra: str) -> int:
    return main(
        ["--uri", uri, "--digest", digest, "--cache-dir", str(cache), "--dest", str(dest), *extra]
    )


def test_http_artifact_lands_verified_and_a_cache_hit_needs_no_network(
    tmp_path: Path, published: tuple[Path, str], file_server: FileServer
) -> None:
    _, digest = published
    uri = f"{file_server.url}/digits-v1"
    assert fetch(uri, digest, tmp_path / "cache", tmp_path / "dest1") == 0
    assert verify_artifact(tmp_path / "dest1", digest).digest == digest
    entry = tmp_path / "cache" / f"sha256-{digest.removeprefix('sha256:')}"
    assert verify_artifact(entry, digest).digest == digest

    file_server.stop()  # the edge node loses its link
    assert fetch(uri, digest, tmp_path / "cache", tmp_path / "dest2", "--retries", "0") == 0
    assert verify_artifact(tmp_path / "dest2", digest).digest == digest


def test_without_cache_an_unreachable_uri_fails_after_bounded_retries(
    tmp_path: Path,
    published: tuple[Path, str],
    file_server: FileServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri = f"{file_server.url}/digits-v1"
    file_server.stop()
    code = fetch(
        uri, published[1], tmp_path / "cache", tmp_path / "dest", "--retries", "1", "--timeout", "2"
    )
    assert code == 1
    assert "unreachable after 2 attempts" in capsys.readouterr().err
    assert not (tmp_path / "dest" / "manifest.json").exists()


def test_digest_mismatch_fails_and_leaves_nothing_in_the_cache(
    tmp_path: Path,
    published: tuple[Path, str],
    file_server: FileServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong = "sha256:" + "ab" * 32
    code = fetch(f"{file_server.url}/digits-v1", wrong, tmp_path / "cache", tmp_path / "dest")
    assert code == 1
    assert f"not the expected {wrong}" in capsys.readouterr().err
    assert cache_contents(tmp_path / "cache") == []


def test_tampered_file_at_the_source_is_refused(
    tmp_path: Path, published: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, digest = published
    model = folder / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    assert fetch(str(folder), digest, tmp_path / "cache", tmp_path / "dest") == 1
    assert "error: DigestMismatch:" in capsys.readouterr().err
    assert cache_contents(tmp_path / "cache") == []


def test_damaged_cache_entry_is_fetched_again(tmp_path: Path, published: tuple[Path, str]) -> None:
    folder, digest = published
    assert fetch(f"file://{folder}", digest, tmp_path / "cache", tmp_path / "dest") == 0
    cached = tmp_path / "cache" / f"sha256-{digest.removeprefix('sha256:')}" / "model.onnx"
    cached.write_bytes(b"rotten")
    assert fetch(f"file://{folder}", digest, tmp_path / "cache", tmp_path / "dest2") == 0
    assert verify_artifact(cached.parent, digest).digest == digest


def test_pvc_uri_resolves_under_the_pvc_root(
    tmp_path: Path, published: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, digest = published
    monkeypatch.setenv("FOGLINE_PVC_ROOT", str(tmp_path))
    assert fetch("pvc://published/digits-v1", digest, tmp_path / "cache", tmp_path / "dest") == 0
    assert verify_artifact(tmp_path / "dest", digest).serving.file == "model.onnx"


def test_missing_file_over_http_is_not_retried(
    tmp_path: Path,
    published: tuple[Path, str],
    file_server: FileServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = fetch(f"{file_server.url}/nope", published[1], tmp_path / "c", tmp_path / "d")
    assert code == 1
    assert "HTTP 404" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("uri", "digest", "message"),
    [
        ("/x", "sha256:abc", "is not of the form sha256:<64 lowercase hex>"),
        ("ftp://host/key", "sha256:" + "0" * 64, "scheme 'ftp' is not supported"),
        ("oci://registry/repo:tag", "sha256:" + "0" * 64, "never a tag"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(
    tmp_path: Path, uri: str, digest: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fetch(uri, digest, tmp_path / "cache", tmp_path / "dest") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_module_entry_point_runs_the_same_program(
    tmp_path: Path, published: tuple[Path, str]
) -> None:
    folder, digest = published
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fogline.workloads.fetch",
            "--uri",
            str(folder),
            "--digest",
            digest,
            "--cache-dir",
            str(tmp_path / "cache"),
            "--dest",
            str(tmp_path / "dest"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{digest} model.onnx ready in {tmp_path / 'dest'}"
