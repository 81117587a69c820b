"""The inference server as a real process on a loopback port, driven by tritonclient.http (a
client written elsewhere) and by raw HTTP for the requests a good client never sends."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from fogline.workloads.manifest import manifest_digest
from tests.workloads.served_artifacts import MlpShape, write_artifact

pytestmark = pytest.mark.workloads

REPO = Path(__file__).resolve().parents[2]
MODEL = "digits"


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(self.address, **kwargs)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            payload = response.read()
            return response.status, json.loads(payload) if payload else {}
        finally:
            connection.close()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def start_server(
    model_dir: Path, log: Path, *extra: str, wrapper: tuple[str, ...] = ()
) -> ServerProcess:
    """Start the server on a free port (port 0) and read the port from its log."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                *wrapper,
                sys.executable,
                "-m",
                "fogline.workloads.server",
                "--model-dir",
                str(model_dir),
                "--name",
                MODEL,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--drain-seconds",
                "0",
                *extra,
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"listening on https?://[\d.]+:(\d+)", log.read_text())
        if match:
            return ServerProcess(process, int(match.group(1)), log)
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}: {log.read_text()}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"server did not listen within 30 s: {log.read_text()}")


def wait_ready(server: ServerProcess, timeout: float = 30) -> None:
    client = server.client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.is_server_ready():
            return
        assert server.process.poll() is None, server.log.read_text()
        time.sleep(0.05)
    pytest.fail(f"server not ready within {timeout} s: {server.log.read_text()}")


@contextlib.contextmanager
def running_servers(artifact: Path, logs: Path, count: int) -> Iterator[list[ServerProcess]]:
    """`count` servers of `artifact` on free loopback ports, Ready; stopped (and their exit
    status checked) on the way out."""
    started = [start_server(artifact, logs / f"server-{i}.log") for i in range(count)]
    try:
        for server in started:
            wait_ready(server)
        yield started
    finally:
        for server in started:
            assert server.stop() == 0, server.log.read_text()


def direct_session(model_dir: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(model_dir / "model.onnx"), options)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("artifact")
    write_artifact(folder, MlpShape(features=64, hidden=32, classes=10), name=MODEL)
    return folder


@pytest.fixture(scope="module")
def server(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    running = start_server(artifact, log, "--max-body-bytes", "200000")
    try:
        wait_ready(running)
        yield running
    finally:
        assert running.stop() == 0, log.read_text()


def infer(server: ServerProcess, batch: np.ndarray, binary: bool = True) -> np.ndarray:
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    output = triton.InferRequestedOutput("logits", binary_data=binary)
    result = server.client().infer(MODEL, [tensor], outputs=[output], request_id="r-1")
    assert result.get_response()["id"] == "r-1"
    logits: np.ndarray = result.as_numpy("logits")
    return logits


def test_server_and_model_metadata_and_readiness(server: ServerProcess, artifact: Path) -> None:
    client = server.client()
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, model_version="1")
    assert not client.is_model_ready("nope")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    metadata = client.get_model_metadata(MODEL)
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_model_metadata(MODEL, model_version="1")["versions"] == ["1"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_inference_equals_onnxruntime_called_directly(
    server: ServerProcess, artifact: Path, binary: bool
) -> None:
    batch = np.random.default_rng(7).standard_normal((5, 64)).astype(np.float32)
    (expected,) = direct_session(artifact).run(["logits"], {"input": batch})
    np.testing.assert_array_equal(infer(server, batch, binary), expected)


def test_all_outputs_come_back_when_none_are_named(server: ServerProcess, artifact: Path) -> None:
    batch = np.ones((1, 64), dtype=np.float32)
    tensor = triton.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(batch)
    result = server.client().infer(MODEL, [tensor])
    (expected,) = direct_session(artifact).run(["logits"], {"input": batch})
    np.testing.assert_array_equal(result.as_numpy("logits"), expected)


def test_compressed_request_bodies_are_accepted(server: ServerProcess, artifact: Path) -> None:
    batch = np.full((2, 64), 0.25, dtype=np.float32)
    tensor = triton.InferInput("input", [2, 64], "FP32")
    tensor.set_data_from_numpy(batch)
    result = server.client().infer(MODEL, [tensor], request_compression_algorithm="gzip")
    (expected,) = direct_session(artifact).run(["logits"], {"input": batch})
    np.testing.assert_array_equal(result.as_numpy("logits"), expected)


def good_body(rows: int = 1) -> bytes:
    tensor = {"name": "input", "datatype": "FP32", "shape": [rows, 64], "data": [0.5] * 64 * rows}
    return json.dumps({"inputs": [tensor]}).encode()


def bad_body(**changes: Any) -> bytes:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}
    tensor.update(changes)
    return json.dumps({"inputs": [tensor]}).encode()


INFER = f"/v2/models/{MODEL}/infer"


@pytest.mark.parametrize(
    ("path", "body", "status", "names"),
    [
        (INFER, bad_body(shape=[1, 63], data=[0.5] * 63), 400, "shape [1, 63]"),
        (INFER, bad_body(shape=[2, 64]), 400, "needs 128"),
        (INFER, bad_body(datatype="INT64", data=[1] * 64), 400, "datatype 'INT64'"),
        (INFER, bad_body(name="pixels"), 400, "'pixels' is not an input"),
        (INFER, bad_body(data=["a"] * 64), 400, "JSON numbers"),
        (INFER, b'{"inputs": [', 400, "not valid JSON"),
        (INFER, b"[]", 400, "JSON object"),
        ("/v2/models/unknown/infer", good_body(), 404, "'unknown' is not served"),
        (f"/v2/models/{MODEL}/versions/7/infer", good_body(), 404, "version '7'"),
        (INFER, good_body(rows=1000), 413, "exceeds the limit of 200000 bytes"),
        ("/v2/nothing", b"", 404, "no endpoint"),
    ],
    ids=[
        "wrong-shape",
        "data-size-vs-shape",
        "wrong-datatype",
        "unknown-input",
        "strings-as-numbers",
        "malformed-json",
        "not-an-object",
        "unknown-model",
        "unknown-version",
        "oversize-body",
        "unknown-path",
    ],
)
def test_bad_request_gets_4xx_naming_the_problem_and_server_keeps_serving(
    server: ServerProcess, path: str, body: bytes, status: int, names: str
) -> None:
    got, document = server.request("POST", path, body, {"Content-Type": "application/json"})
    assert got == status
    assert names in document["error"]
    assert infer(server, np.zeros((1, 64), dtype=np.float32)).shape == (1, 10)


def test_oversize_body_on_a_kept_alive_connection_leaves_it_usable(server: ServerProcess) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("POST", INFER, body=good_body(rows=1000))
        first = connection.getresponse()
        assert first.status == 413
        first.read()
        connection.request("POST", INFER, body=good_body())
        second = connection.getresponse()
        assert second.status == 200
        assert json.loads(second.read())["outputs"][0]["shape"] == [1, 10]
    finally:
        connection.close()


def test_wrong_method_is_405(server: ServerProcess) -> None:
    status, document = server.request("GET", INFER)
    assert status == 405
    assert "use POST" in document["error"]


def test_metrics_count_requests_and_label_the_digest(server: ServerProcess, artifact: Path) -> None:
    infer(server, np.zeros((1, 64), dtype=np.float32))
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    digest = manifest_digest(json.loads((artifact / "manifest.json").read_text()))
    assert re.search(
        r'fogline_http_requests_total\{endpoint="/v2/models/\{name\}/infer",method="POST",'
        r'status="200"\} [1-9]',
        text,
    )
    assert 'fogline_http_request_duration_seconds_bucket{endpoint="/v2/models/{name}/infer"' in text
    assert re.search(r'fogline_inference_duration_seconds_count\{model="digits"\} [1-9]', text)
    assert re.search(r'fogline_model_load_duration_seconds\{model="digits"\} \d', text)
    (info,) = [line for line in text.splitlines() if line.startswith("fogline_model_info{")]
    for label in ('model="digits"', 'version="1"', f'digest="{digest}"'):
        assert label in info
    assert 'fogline_model_ready{model="digits"} 1' in text
    for process_metric in ("process_resident_memory_bytes", "process_open_fds"):
        assert re.search(rf"^{process_metric} \d", text, re.MULTILINE)


def test_tampered_artifact_never_becomes_ready(tmp_path: Path) -> None:
    write_artifact(tmp_path / "model", name=MODEL)
    model_file = tmp_path / "model" / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[-5] ^= 0xFF  # a weight byte: still a loadable model, no longer the manifest's
    model_file.write_bytes(bytes(data))
    server = start_server(tmp_path / "model", tmp_path / "server.log")
    deadline = time.monotonic() + 30
    while server.process.poll() is None and time.monotonic() < deadline:
        try:
            status, _ = server.request("GET", "/v2/health/ready")
            assert status == 503
        except ConnectionError:
            pass  # the server closed its socket on the way out
        time.sleep(0.02)
    assert server.process.wait(timeout=5) == 1
    log = server.log.read_text()
    assert "error: model 'digits' not served" in log
    assert "differs from manifest's" in log


def test_expected_digest_that_differs_is_refused(tmp_path: Path) -> None:
    write_artifact(tmp_path / "model", name=MODEL)
    server = start_server(
        tmp_path / "model", tmp_path / "server.log", "--expected-digest", "sha256:" + "0" * 64
    )
    assert server.process.wait(timeout=30) == 1
    assert "is not the expected sha256:000" in server.log.read_text()


def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    # A model heavy enough that a few requests are still running when SIGTERM arrives.
    shape = MlpShape(features=512, hidden=1024, layers=4, classes=10)
    write_artifact(tmp_path / "heavy", shape, name=MODEL)
    server = start_server(tmp_path / "heavy", tmp_path / "server.log", "--max-batch-size", "1")
    wait_ready(server)
    batch = np.random.default_rng(1).standard_normal((1024, 512)).astype(np.float32)
    results: list[np.ndarray | BaseException] = []

    def send() -> None:
        tensor = triton.InferInput("input", [1024, 512], "FP32")
        tensor.set_data_from_numpy(batch)
        try:
            results.append(
                server.client(network_timeout=60).infer(MODEL, [tensor]).as_numpy("logits")
            )
        except Exception as err:  # recorded and asserted on below
            results.append(err)

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the /metrics request itself counts as one in flight
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
        match = re.search(r"^fogline_http_requests_in_flight (\d+)", text, re.MULTILINE)
        if match and int(match.group(1)) == 5:
            break
        time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    for sender in senders:
        sender.join(timeout=60)
    assert server.process.wait(timeout=30) == 0
    (expected,) = direct_session(tmp_path / "heavy").run(["logits"], {"input": batch})
    assert len(results) == 4
    for result in results:
        assert isinstance(result, np.ndarray), result
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    assert "SIGTERM: draining" in server.log.read_text()
