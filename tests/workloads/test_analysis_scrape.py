"""The rollout analysis' pod scrape source against real inference servers on loopback
ports (`python -m fogline.workloads.server` serving a real ONNX model), a port nobody
listens on and a listener that never answers: what it reads, the increase over the
window, the verdict on it, and the bounds on how many requests it makes and how many at
once."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from fogline.api.edgedeployment import AnalysisSpec
from fogline.controllers.analysis import AnalysisWindow, PodScrapeSource
from fogline.rollout.analysis import PodTarget, PodWindow, judge
from tests.workloads.served_artifacts import MlpShape, write_artifact
from tests.workloads.test_server import MODEL, ServerProcess, infer, running_servers

pytestmark = pytest.mark.workloads

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = ("ns", "shop", 0, "sha256:" + "a" * 64)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    artifact = tmp_path_factory.mktemp("artifact")
    write_artifact(artifact, MlpShape(features=64, hidden=32, classes=10), name=MODEL)
    with running_servers(artifact, tmp_path_factory.mktemp("servers"), 2) as started:
        yield started


class _Hold(socketserver.BaseRequestHandler):
    """Accepts and never answers: reads until the client gives up, counting connections."""

    def handle(self) -> None:
        server: Silent = self.server  # type: ignore[assignment]
        server.opened(self.request)
        try:
            while self.request.recv(4096):
                pass
        except OSError:
            pass
        finally:
            server.closed(self.request)


def _peer_has_closed(connection: socket.socket) -> bool:
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Silent(socketserver.ThreadingTCPServer):
    """Counts the most connections its clients held open at once. A connection the client
    has closed counts no more from its FIN on, though the handler thread that reads the end
    may run later than the client's next connection arrives."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Hold)
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        self.most = 0

    def opened(self, connection: socket.socket) -> None:
        with self.lock:
            self.connections = {c for c in self.connections if not _peer_has_closed(c)}
            self.connections.add(connection)
            self.most = max(self.most, len(self.connections))

    def closed(self, connection: socket.socket) -> None:
        with self.lock:
            self.connections.discard(connection)


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def target(name: str, site: str, port: int, baseline: bool = False) -> PodTarget:
    return PodTarget(name, site, "127.0.0.1", port, baseline)


def window(*targets: PodTarget) -> AnalysisWindow:
    return AnalysisWindow(KEY, "ns", T0, 5.0, targets)


def send(server: ServerProcess, count: int) -> None:
    batch = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    for _ in range(count):
        infer(server, batch)


def test_the_window_counts_the_inference_requests_each_server_answered_since_it_opened(
    servers: list[ServerProcess],
) -> None:
    wave, base = servers
    targets = window(target("wave-0", "a", wave.port), target("base-0", "b", base.port, True))
    source = PodScrapeSource(min_interval_seconds=1.0)

    async def run() -> tuple[list[PodWindow], list[PodWindow]]:
        try:
            first = await source.sample(targets, T0)
            await asyncio.to_thread(send, wave, 25)
            await asyncio.to_thread(send, base, 5)
            later = await source.sample(targets, T0 + timedelta(seconds=6))
            return first, later
        finally:
            await source.close()

    first, later = asyncio.run(run())
    assert [w.since for w in first] == [T0, T0]
    assert all(w.counters is not None and w.counters.requests == 0 for w in first)
    by_pod = {w.pod: w for w in later}
    assert by_pod["wave-0"].counters is not None and by_pod["wave-0"].counters.requests == 25
    assert by_pod["base-0"].counters is not None and by_pod["base-0"].counters.requests == 5
    assert by_pod["wave-0"].counters.errors == 0
    policy = AnalysisSpec(
        window_seconds=5, min_requests=20, max_error_ratio=0.01, max_p99_latency_ms=5000
    )
    verdict = judge(policy, later, T0, T0 + timedelta(seconds=6))
    assert verdict.phase == "Passed", verdict.message
    assert verdict.requests == 25
    assert source.requests == 4


def test_a_pod_nobody_listens_on_and_one_that_never_answers_are_not_read(
    servers: list[ServerProcess], silent: Silent
) -> None:
    wave = servers[0]
    targets = window(
        target("wave-0", "a", wave.port),
        target("gone", "a", closed_port()),
        target("stuck", "b", silent.server_address[1]),
    )
    outcomes: list[str] = []
    source = PodScrapeSource(timeout_seconds=0.5, on_scrape=outcomes.append)

    async def run() -> list[PodWindow]:
        try:
            return await source.sample(targets, T0)
        finally:
            await source.close()

    read = {w.pod: w for w in asyncio.run(run())}
    assert read["wave-0"].counters is not None
    assert read["gone"].counters is None and "cannot reach" in (read["gone"].problem or "")
    assert read["stuck"].counters is None and read["stuck"].problem == "no answer within 0.5s"
    assert sorted(outcomes) == ["error", "ok", "timeout"]
    policy = AnalysisSpec(window_seconds=5, min_requests=1, max_error_ratio=0.5)
    verdict = judge(policy, list(read.values()), T0, T0 + timedelta(seconds=6))
    assert verdict.phase != "Passed"


def test_scrapes_are_bounded_per_pod_per_interval_and_in_concurrency(silent: Silent) -> None:
    port = silent.server_address[1]
    targets = window(*(target(f"stuck-{i}", f"s{i}", port) for i in range(6)))
    source = PodScrapeSource(min_interval_seconds=10.0, timeout_seconds=0.5, concurrency=4)

    async def run() -> None:
        try:
            await source.sample(targets, T0)
            # Sooner than the interval: the last readings are answered again, no request.
            await source.sample(targets, T0 + timedelta(seconds=3))
            await source.sample(targets, T0 + timedelta(seconds=9))
            assert source.requests == 6
            await source.sample(targets, T0 + timedelta(seconds=10))
        finally:
            await source.close()

    asyncio.run(run())
    assert source.requests == 12
    assert 1 <= silent.most <= 4


def test_a_sample_that_runs_out_of_time_cuts_the_scrapes_left_and_reads_them_as_not_read(
    silent: Silent,
) -> None:
    """Twelve pods that never answer, 4 at a time, 0.5 s each: three rounds of at least
    0.5 s, and the sample may take 1.2 s, so the third round is cut."""
    port = silent.server_address[1]
    targets = window(*(target(f"stuck-{i:02}", f"s{i}", port) for i in range(12)))
    outcomes: list[str] = []
    source = PodScrapeSource(
        timeout_seconds=0.5, concurrency=4, budget_seconds=1.2, on_scrape=outcomes.append
    )

    async def run() -> list[PodWindow]:
        try:
            return await source.sample(targets, T0)
        finally:
            await source.close()

    read = asyncio.run(run())
    assert all(w.counters is None for w in read)
    cut = [w.pod for w in read if w.problem == "not read within the 1.2s a sample may take"]
    assert len(cut) >= 4
    assert outcomes.count("timeout") + outcomes.count("cut") == source.requests
    assert source.requests <= 12


def test_a_forgotten_analysis_starts_a_fresh_window(servers: list[ServerProcess]) -> None:
    """What an operator restart does too: the first readings are gone, the window opens at
    the next reading."""
    wave = servers[0]
    targets = window(target("wave-0", "a", wave.port))
    source = PodScrapeSource(min_interval_seconds=0.0)

    async def run() -> list[PodWindow]:
        try:
            await source.sample(targets, T0)
            await asyncio.to_thread(send, wave, 3)
            source.forget(KEY)
            return await source.sample(targets, T0 + timedelta(seconds=20))
        finally:
            await source.close()

    after = asyncio.run(run())
    assert after[0].since == T0 + timedelta(seconds=20)
    assert after[0].counters is not None and after[0].counters.requests == 0
