"""Replacing the inference server under load, at process level: clients send continuously through
a router that, like a Service's endpoints, keeps an address only while its readiness probe
passes and learns of a change late. The old server gets SIGTERM once the new one is ready; no
request may fail. What a real pod replacement adds on top (kube-proxy, the kubelet) is not here:
this proves the server's half of the bargain, that it keeps serving for its drain period after
readiness turns 503, longer than the router takes to notice."""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.workloads.served_artifacts import MlpShape, write_artifact
from tests.workloads.test_server import (
    INFER,
    MODEL,
    ServerProcess,
    good_body,
    start_server,
    wait_ready,
)

pytestmark = pytest.mark.workloads

ROUTER_LAG = 0.5  # seconds between readiness changing and the router acting on it
DRAIN = 2.0


class Router:
    """Ready endpoints by port, updated from readiness probes; each request goes to the next."""

    def __init__(self, ports: list[int]) -> None:
        self.ready: list[int] = list(ports)
        self.watched: list[int] = list(ports)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._turn = 0

    def pick(self) -> int:
        with self.lock:
            self._turn += 1
            return self.ready[self._turn % len(self.ready)]

    def watch(self, port: int) -> None:
        with self.lock:
            self.watched.append(port)

    def probe_forever(self) -> None:
        while not self.stop.is_set():
            verdicts = {port: probe(port) for port in list(self.watched)}
            time.sleep(ROUTER_LAG)  # the router acts on what it saw, late
            with self.lock:
                ready = [port for port, ok in verdicts.items() if ok]
                if ready:
                    self.ready = ready


def probe(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/v2/health/ready")
        response = connection.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        connection.close()


def test_replacing_the_server_under_load_fails_no_request(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    write_artifact(folder, MlpShape(features=64, hidden=32, classes=10), name=MODEL)
    old = start_server(folder, tmp_path / "old.log", "--drain-seconds", str(DRAIN))
    new: ServerProcess | None = None
    wait_ready(old)
    router = Router([old.port])
    body = good_body()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    sigterm_at: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        connections: dict[int, http.client.HTTPConnection] = {}
        sent = 0
        while not router.stop.is_set() and sent < 20_000:
            port = router.pick()
            connection = connections.get(port) or http.client.HTTPConnection(
                "127.0.0.1", port, timeout=10
            )
            connections[port] = connection
            sent += 1
            try:
                connection.request("POST", INFER, body=body)
                response = connection.getresponse()
                payload = response.read()
                ok = response.status == 200 and b'"shape":[1,10]' in payload
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    del connections[port]
            except (OSError, http.client.HTTPException) as err:
                ok, payload = False, repr(err).encode()
                connection.close()
                connections.pop(port, None)
            with lock:
                late = bool(sigterm_at) and port == old.port
                outcomes["old after SIGTERM" if late else str(port)] += 1
                if not ok:
                    failures.append(f"{port}: {payload[:200]!r}")
        for connection in connections.values():
            connection.close()

    prober = threading.Thread(target=router.probe_forever)
    clients = [threading.Thread(target=client) for _ in range(4)]
    try:
        prober.start()
        for thread in clients:
            thread.start()
        time.sleep(0.5)  # load on the old server alone
        new = start_server(folder, tmp_path / "new.log", "--drain-seconds", str(DRAIN))
        wait_ready(new)
        router.watch(new.port)
        deadline = time.monotonic() + 30
        while new.port not in router.ready:
            assert time.monotonic() < deadline, "the router never saw the new server ready"
            time.sleep(0.05)
        with lock:
            sigterm_at.append(time.monotonic())
        old.process.terminate()
        assert old.process.wait(timeout=30) == 0
        time.sleep(0.5)  # load on the new server alone
    finally:
        router.stop.set()
        for thread in (*clients, prober):
            thread.join(timeout=30)
        old.stop()
        if new is not None:
            assert new.stop() == 0
    assert failures == []
    assert outcomes["old after SIGTERM"] > 0  # the drain served what the router still sent
    assert new is not None and outcomes[str(new.port)] > 0
    assert "SIGTERM: draining" in old.log.read_text()
