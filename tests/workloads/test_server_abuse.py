"""The inference server against what strangers send: malformed framing, oversized heads,
slowloris, pipelining floods, overload and disconnects, all as raw bytes on loopback sockets.
Each refusal is followed by a good request that must be answered correctly, and memory is
checked against its figure at rest. Every test bounds its traffic in count and time."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

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

HEAD_TIMEOUT = 1.0
MAX_BODY = 200_000


def rss_kib(server: ServerProcess) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def peak_rss_kib(server: ServerProcess) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response from a raw socket (Content-Length framed, as this server sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data[:200]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


def exchange(port: int, *pieces: bytes, pause: float = 0.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes (in pieces, `pause` apart) and read the one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for piece in pieces:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed before the rest: read its answer
            if pause:
                time.sleep(pause)
        return read_response(sock)


def post(body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def assert_serves(server: ServerProcess) -> None:
    status, _, body = exchange(server.port, post(good_body()))
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["shape"] == [1, 10]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("artifact")
    write_artifact(folder, MlpShape(features=64, hidden=32, classes=10), name=MODEL)
    return folder


@pytest.fixture(scope="module")
def server(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    running = start_server(
        artifact,
        log,
        "--max-body-bytes",
        str(MAX_BODY),
        "--request-head-timeout",
        str(HEAD_TIMEOUT),
        "--idle-timeout",
        "3",
    )
    try:
        wait_ready(running)
        yield running
    finally:
        assert running.stop() == 0, log.read_text()
        assert "Traceback" not in log.read_text()


GOOD = post(good_body())
HEAD = f"POST {INFER} HTTP/1.1\r\nHost: x\r\n"
MANY_HEADERS = "".join(f"X-{i}: v\r\n" for i in range(101))  # over the 100 allowed
LARGE_HEADERS = "".join(f"X-{i}: {'v' * 1000}\r\n" for i in range(90))  # 90 KB, each line short


def binary_request(shape: list[int], size: int) -> tuple[bytes, str]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": shape,
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    return header + b"\0" * size, f"Inference-Header-Content-Length: {len(header)}\r\n"


OVERFLOW_BINARY, OVERFLOW_BINARY_HEADER = binary_request([2**62, 64], 256)


@pytest.mark.parametrize(
    ("raw", "status", "names"),
    [
        (f"{HEAD}Content-Length: 5\r\nContent-Length: 6\r\n\r\n{{}}   ", 400, "Content-Length"),
        (f"{HEAD}Content-Length: 2\r\nContent-Length: 2\r\n\r\n{{}}", 400, "Content-Length"),
        (
            f"{HEAD}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "malformed",
        ),
        (f"{HEAD}X-A: a\r\n folded\r\nContent-Length: 2\r\n\r\n{{}}", 400, "malformed"),
        (f"{HEAD}X-A: a\nX-B: b\r\nContent-Length: 2\r\n\r\n{{}}", 400, "malformed"),
        (f"{HEAD}X-A: a\x00b\r\nContent-Length: 2\r\n\r\n{{}}", 400, "malformed"),
        (f"{HEAD}Content-Length: \u0663\r\n\r\n{{}}", 400, "malformed"),
        (
            f"{HEAD}Content-Length: 2\r\nContent-Encoding: gzip\r\nContent-Encoding: gzip\r\n\r\n{{}}",
            400,
            "more than once",
        ),
        (f"GET /{'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n", 414, "--max-header-line-bytes"),
        (
            f"{HEAD}X-Big: {'a' * 9000}\r\nContent-Length: 2\r\n\r\n{{}}",
            431,
            "--max-header-line-bytes",
        ),
        (f"{HEAD}{MANY_HEADERS}Content-Length: 2\r\n\r\n{{}}", 431, "Too many headers"),
        (f"{HEAD}{LARGE_HEADERS}Content-Length: 2\r\n\r\n{{}}", 431, "--max-header-bytes"),
        (f"{HEAD}Content-Length: {MAX_BODY + 1}\r\n\r\n", 413, "--max-body-bytes"),
        (
            f"{HEAD}Transfer-Encoding: chunked\r\n\r\n{MAX_BODY + 1:x}\r\n{'a' * (MAX_BODY + 1)}\r\n0\r\n\r\n",
            413,
            "--max-body-bytes",
        ),
    ],
    ids=[
        "conflicting-content-length",
        "duplicate-content-length",
        "content-length-and-transfer-encoding",
        "obs-fold",
        "bare-lf",
        "nul-in-header",
        "non-ascii-digit-content-length",
        "duplicate-content-encoding",
        "request-line-too-long",
        "header-line-too-long",
        "too-many-headers",
        "header-block-too-large",
        "body-over-limit",
        "chunked-body-over-limit",
    ],
)
@pytest.mark.parametrize("trickled", [False, True], ids=["one-read", "trickled"])
def test_bad_framing_is_refused_with_a_json_error_and_the_server_serves_on(
    server: ServerProcess, raw: str, status: int, names: str, trickled: bool
) -> None:
    data = raw.encode("utf-8")
    pieces = [data[i : i + 4096] for i in range(0, len(data), 4096)] if trickled else [data]
    got, headers, body = exchange(server.port, *pieces, pause=0.01 if trickled else 0)
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    assert names in json.loads(body)["error"]
    assert_serves(server)


@pytest.mark.parametrize(
    ("body", "extra", "names"),
    [
        (b"[" * 100_000, "", "not valid JSON"),
        (good_body().replace(b"0.5", b"null", 1), "", "null"),
        (good_body().replace(b"0.5", b"NaN", 1), "", "not valid JSON"),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "FP32",
                            "shape": [2**62, 64],
                            "data": [0.5] * 64,
                        }
                    ]
                }
            ).encode(),
            "",
            "needs",
        ),
        (OVERFLOW_BINARY, OVERFLOW_BINARY_HEADER, "does not match shape"),
        (good_body(), "Inference-Header-Content-Length: \u0661\u0662\r\n", "not a byte count"),
        (good_body(), "Inference-Header-Content-Length: -5\r\n", "not a byte count"),
        (
            good_body(),
            "Inference-Header-Content-Length: 99999999999999999999999\r\n",
            "not a byte count",
        ),
    ],
    ids=[
        "deeply-nested-json",
        "null-in-data",
        "nan-literal",
        "element-count-overflow-json",
        "element-count-overflow-binary",
        "non-ascii-inference-header-length",
        "negative-inference-header-length",
        "huge-inference-header-length",
    ],
)
def test_bad_inference_bodies_are_400_and_the_server_serves_on(
    server: ServerProcess, body: bytes, extra: str, names: str
) -> None:
    got, _, answer = exchange(server.port, post(body, extra))
    assert got == 400, answer
    assert names in json.loads(answer)["error"]
    assert_serves(server)


def test_non_finite_outputs_are_json_strings_that_clients_read_back(server: ServerProcess) -> None:
    batch = np.zeros((2, 64), dtype=np.float32)
    batch[1, 0] = np.nan  # travels as binary; the JSON answer must still be JSON
    tensor = triton.InferInput("input", [2, 64], "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    output = triton.InferRequestedOutput("logits", binary_data=False)
    result = server.client().infer(MODEL, [tensor], outputs=[output])
    logits = result.as_numpy("logits")
    assert np.isfinite(logits[0]).all()
    assert np.isnan(logits[1]).all()
    raw = result.get_response()["outputs"][0]["data"]
    assert raw[10:] == ["NaN"] * 10


def test_slowloris_connections_get_408_and_memory_stays_bounded(server: ServerProcess) -> None:
    at_rest = rss_kib(server)
    sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
    try:
        for sock in sockets:
            sock.sendall(HEAD.encode())  # a head that never ends
        assert_serves(server)  # the others are served meanwhile
        statuses = []
        deadline = time.monotonic() + 30
        for sock in sockets:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            statuses.append(read_response(sock)[0])
        assert statuses == [408] * 300
        assert rss_kib(server) - at_rest < 20 * 1024
    finally:
        for sock in sockets:
            sock.close()
    assert_serves(server)


def test_pipelining_flood_without_reading_is_bounded(server: ServerProcess) -> None:
    at_rest = rss_kib(server)
    flood = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 20_000
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.setblocking(False)
        sent, deadline = 0, time.monotonic() + 10
        while sent < len(flood) and time.monotonic() < deadline:
            try:
                sent += sock.send(flood[sent : sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
        # 20,000 answers of several KB each would be ~100 MB if the server held them all; it
        # stops reading past a few queued requests and a stalled write.
        assert_serves(server)
        assert rss_kib(server) - at_rest < 20 * 1024
    assert_serves(server)


def test_unknown_method_names_do_not_grow_the_metrics(server: ServerProcess) -> None:
    for index in range(50):  # not HTTP methods at all: the parser refuses them
        status, _, _ = exchange(server.port, f"M{'X' * 100}{index} /v2 HTTP/1.1\r\n\r\n".encode())
        assert status == 400
    for method in ("PROPFIND", "MKCOL", "LOCK"):  # methods, but none this server knows
        status, _, _ = exchange(server.port, f"{method} /v2 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert status == 405
    _, _, text = exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"XXXX" not in text
    assert b"PROPFIND" not in text
    assert b'fogline_http_requests_total{endpoint="/v2",method="other",status="405"} 3.0' in text
    assert re.search(rb'fogline_http_refused_total\{status="400"\} [1-9]', text)


def test_a_thousand_keep_alive_clients_are_all_served(artifact: Path, tmp_path: Path) -> None:
    """With the default head deadline: the module's server gives a request head 1 s from the
    connection's start, and a client process opening 1,000 connections at once on a busy
    machine can take longer than that to send its first request (a slowloris, to the server)."""
    clients, rounds = 1000, 3
    server = start_server(artifact, tmp_path / "server.log", "--max-queue", "1024")
    wait_ready(server)

    async def client() -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        statuses = []
        try:
            for _ in range(rounds):
                writer.write(GOOD)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                statuses.append(int(head.split(b" ")[1]))
                await asyncio.sleep(0.05)
        finally:
            writer.close()
        return statuses

    async def everyone() -> list[list[int]]:
        return await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), 120)

    try:
        results = asyncio.run(everyone())
        assert results == [[200] * rounds] * clients
        assert_serves(server)
    finally:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def heavy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A model slow enough that requests queue up behind one another."""
    folder = tmp_path_factory.mktemp("heavy")
    write_artifact(folder, MlpShape(features=512, hidden=1024, layers=4, classes=10), name=MODEL)
    log = folder / "server.log"
    running = start_server(folder, log, "--max-batch-size", "1", "--max-queue", "2")
    try:
        wait_ready(running)
        yield running
    finally:
        assert running.stop() == 0, log.read_text()


def heavy_body(rows: int = 256) -> bytes:
    array = np.random.default_rng(3).standard_normal((rows, 512)).astype(np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [rows, 512],
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ]
        }
    ).encode()
    return (
        (
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(header) + array.nbytes}\r\n\r\n"
        ).encode()
        + header
        + array.tobytes()
    )


def metric(server: ServerProcess, name: str) -> float:
    _, _, text = exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    match = re.search(rf"^{re.escape(name)} (\S+)$", text.decode(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_queue_overflow_is_503_with_retry_after_and_the_rest_are_served(
    heavy: ServerProcess,
) -> None:
    request = heavy_body()
    answers: list[tuple[int, dict[str, str], bytes]] = []
    lock = threading.Lock()

    def send() -> None:
        answer = exchange(heavy.port, request)
        with lock:
            answers.append(answer)

    senders = [threading.Thread(target=send) for _ in range(12)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=60)
    statuses = sorted(status for status, _, _ in answers)
    assert len(statuses) == 12
    assert set(statuses) == {200, 503}, statuses
    for status, headers, body in answers:
        if status == 503:
            assert headers["retry-after"] == "1"
            assert "--max-queue" in json.loads(body)["error"]
    assert metric(heavy, "fogline_inference_queue_rejected_total") == statuses.count(503)


def test_a_client_that_goes_away_takes_its_queued_work_with_it(heavy: ServerProcess) -> None:
    request = heavy_body(rows=1024)
    before = metric(heavy, "fogline_inference_queue_cancelled_total")
    sockets = [socket.create_connection(("127.0.0.1", heavy.port)) for _ in range(3)]
    for sock in sockets:
        sock.sendall(request)
    deadline = time.monotonic() + 30
    while metric(heavy, "fogline_inference_queue_depth") < 1:  # one runs, the others wait
        assert time.monotonic() < deadline, "no request ever waited in the queue"
        time.sleep(0.01)
    for sock in sockets:
        sock.close()
    deadline = time.monotonic() + 30
    while metric(heavy, "fogline_inference_queue_cancelled_total") <= before:
        assert time.monotonic() < deadline, "no queued request was cancelled"
        time.sleep(0.05)
    status, _, _ = exchange(heavy.port, request)
    assert status == 200


def test_large_body_leaves_health_probes_answered(artifact: Path, tmp_path: Path) -> None:
    server = start_server(artifact, tmp_path / "server.log")
    try:
        wait_ready(server)
        rows = 60_000  # 60,000 x 64 floats: a 16 MB JSON body
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [rows, 64],
                        "data": [0.123] * (rows * 64),
                    }
                ]
            }
        ).encode()
        at_rest = peak_rss_kib(server)
        probes_during = 0
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(post(body))
            sock.setblocking(False)
            answer = b""
            while b"\r\n\r\n" not in answer:
                # Whether the big answer came yet is checked before each probe.
                try:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
                    continue
                except BlockingIOError:
                    pass
                status, _, _ = exchange(
                    server.port, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                assert status == 200
                probes_during += 1
            sock.setblocking(True)
            status = int(answer.split(b" ")[1])
        assert status == 200
        assert probes_during >= 5
        peak = peak_rss_kib(server) - at_rest
        assert peak * 1024 < 12 * len(body), f"peak {peak} KiB for a {len(body)} byte body"
    finally:
        assert server.stop() == 0


def write_self_signed(cert: Path, key: Path) -> None:
    """A one-day certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_tls_and_bearer_token_guard_inference_but_not_health(
    artifact: Path, tmp_path: Path
) -> None:
    import http.client
    import ssl

    cert, key, token = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "token"
    write_self_signed(cert, key)
    token.write_text("s3cret-token\n")
    server = start_server(
        artifact,
        tmp_path / "server.log",
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--auth-token-file",
        str(token),
    )
    context = ssl.create_default_context(cafile=str(cert))  # verified: the SAN is 127.0.0.1

    def call(path: str, body: bytes | None, headers: dict[str, str]) -> int:
        connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context)
        try:
            connection.request("POST" if body else "GET", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    try:
        deadline = time.monotonic() + 30
        while call("/v2/health/ready", None, {}) != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert call("/v2/health/live", None, {}) == 200
        assert call(INFER, good_body(), {}) == 401
        assert call(INFER, good_body(), {"Authorization": "Bearer wrong"}) == 401
        assert call(f"/v2/models/{MODEL}", None, {}) == 401
        assert call(INFER, good_body(), {"Authorization": "Bearer s3cret-token"}) == 200
    finally:
        assert server.stop() == 0


def test_descriptor_limit_refuses_quietly(artifact: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = start_server(
        artifact, log, "--max-connections", "5000", wrapper=("prlimit", "--nofile=128:128")
    )
    sockets: list[socket.socket] = []
    try:
        wait_ready(server)
        for _ in range(300):
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        refused = 0
        for sock in sockets[100:]:
            try:
                status, headers, _ = read_response(sock)
            except (ConnectionError, TimeoutError, OSError):
                continue
            assert status == 503
            assert headers["retry-after"] == "1"
            refused += 1
        assert refused > 0
    finally:
        for sock in sockets:
            sock.close()
    try:
        assert_serves(server)
    finally:
        assert server.stop() == 0
    text = log.read_text()
    assert "Traceback" not in text
    assert len(text) < 10_000
    assert text.count("does not fit the descriptor limit") == 1


def test_bodies_past_the_global_budget_are_503_and_the_budget_comes_back(
    artifact: Path, tmp_path: Path
) -> None:
    """Many connections each within the body limit cannot together hold more than the budget:
    two half-sent bodies hold most of it; the next body that would not fit (sized up front,
    chunked as it arrives, or small compressed but large inflated) gets 503 with Retry-After
    while small requests, plain and compressed, still fit, and once the two are answered the
    budget is whole again."""
    size = 100_000
    budget = ("--max-body-bytes", str(size), "--max-body-bytes-in-flight", str(250_000))
    server = start_server(artifact, tmp_path / "server.log", *budget)
    padded = good_body() + b" " * (size - len(good_body()))
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
    try:
        wait_ready(server)
        for sock in held:
            request = post(padded)
            sock.sendall(request[: len(request) - size // 2])
        gauge = "fogline_http_request_body_bytes_in_flight"
        deadline = time.monotonic() + 10
        while metric(server, gauge) < 2 * size:
            assert time.monotonic() < deadline, "the half-sent bodies were never counted"
            time.sleep(0.05)
        chunk = b" " * 60_000
        chunked = (
            (
                f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Transfer-Encoding: chunked\r\n\r\n{len(chunk):x}\r\n"
            ).encode()
            + chunk
            + b"\r\n0\r\n\r\n"
        )
        gzip_header = "Content-Encoding: gzip\r\n"
        inflating = post(gzip.compress(good_body() + b" " * 60_000), gzip_header)
        for refused in (post(padded), chunked, inflating):
            status, headers, body = exchange(server.port, refused)
            assert status == 503, body
            assert headers["retry-after"] == "1"
            assert "--max-body-bytes-in-flight" in json.loads(body)["error"]
        assert_serves(server)  # small bodies still fit beside the two
        status, _, body = exchange(server.port, post(gzip.compress(good_body()), gzip_header))
        assert status == 200, body
        for sock in held:
            sock.sendall(padded[-(size // 2) :])
            status, _, body = read_response(sock)
            assert status == 200, body
        assert metric(server, gauge) == 0
        status, _, body = exchange(server.port, post(padded))  # the whole budget is back
        assert status == 200, body
    finally:
        for sock in held:
            sock.close()
        assert server.stop() == 0
        assert "Traceback" not in (tmp_path / "server.log").read_text()
