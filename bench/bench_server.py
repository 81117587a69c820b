"""Benchmark of the edge inference server, every figure measured in one run: onnxruntime called
in-process, torch eager on CPU, `fogline serve`, and KServe's Python model server serving the same
ONNX file over the same protocol; then the trainer's CNN at batch 8 under concurrent load with
micro-batching on and off, and the data plane's JSON work with the standard library and orjson.
HTTP load comes from a separate client process on loopback.

The servers compared run side by side for the whole comparison, and their measurements
alternate in rounds (A B, B A, A B, ...): on a shared machine the load drifts within a minute,
so a ratio is taken within each round and the median of the rounds' ratios is reported, with
their range. Every server runs pinned to one core and every load client to another, so the
client never competes with the server it measures and both servers get the same CPU.

    .venv/bin/python bench/bench_server.py            # after bench/setup_kserve.sh
    .venv/bin/python bench/bench_server.py --skip-kserve --duration 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "digits"
FEATURES, HIDDEN, CLASSES = 64, 128, 10  # the trainer's default MLP on the digits dataset


@dataclass(frozen=True)
class Figures:
    p50_ms: float
    p99_ms: float
    throughput: float  # requests (or calls) per second
    count: int
    errors: int = 0
    cpu_ms: float | None = None  # the server's CPU time (all its threads) per request

    @classmethod
    def of(
        cls, latencies: list[float], elapsed: float, errors: int = 0, cpu_ms: float | None = None
    ) -> Figures:
        ordered = sorted(latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return cls(
            statistics.median(ordered) * 1e3,
            p99 * 1e3,
            len(ordered) / elapsed,
            len(ordered),
            errors,
            cpu_ms,
        )


# ---------------------------------------------------------------- the model


def build_artifact(folder: Path) -> Any:
    """Write model.onnx and manifest.json for a seeded torch MLP; returns the torch module."""
    import numpy as np
    import torch
    from onnx import TensorProto, helper, numpy_helper

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, CLASSES),
    ).eval()
    linears = [layer for layer in module if isinstance(layer, torch.nn.Linear)]
    nodes, weights, current = [], [], "input"
    for index, layer in enumerate(linears):
        weights += [
            numpy_helper.from_array(layer.weight.detach().numpy().astype(np.float32), f"w{index}"),
            numpy_helper.from_array(layer.bias.detach().numpy().astype(np.float32), f"b{index}"),
        ]
        gemm = "logits" if index == len(linears) - 1 else f"g{index}"
        nodes.append(
            helper.make_node("Gemm", [current, f"w{index}", f"b{index}"], [gemm], transB=1)
        )
        if gemm != "logits":
            nodes.append(helper.make_node("Relu", [gemm], [f"h{index}"]))
            current = f"h{index}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_folder(folder, model.SerializeToString(), FEATURES)
    return module


CNN_SIDE, CNN_HIDDEN, CNN_BATCH = 28, 128, 8


def build_cnn_artifact(folder: Path) -> None:
    """The trainer's `cnn` architecture (two 3x3 convolutions, max-pool, two linear layers) on
    28x28 single-channel images given as flat rows, as ONNX with seeded weights."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    pooled = CNN_SIDE // 2

    def weight(name: str, *shape: int) -> Any:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        values = rng.standard_normal(shape) / np.sqrt(fan_in)
        return numpy_helper.from_array(values.astype(np.float32), name)

    features = CNN_SIDE * CNN_SIDE
    initializers = [
        numpy_helper.from_array(np.array([-1, 1, CNN_SIDE, CNN_SIDE], dtype=np.int64), "image"),
        weight("c1w", 16, 1, 3, 3),
        weight("c1b", 16),
        weight("c2w", 32, 16, 3, 3),
        weight("c2b", 32),
        weight("l1w", CNN_HIDDEN, 32 * pooled * pooled),
        weight("l1b", CNN_HIDDEN),
        weight("l2w", CLASSES, CNN_HIDDEN),
        weight("l2b", CLASSES),
    ]
    nodes = [
        helper.make_node("Reshape", ["input", "image"], ["x0"]),
        helper.make_node("Conv", ["x0", "c1w", "c1b"], ["x1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["x1"], ["x2"]),
        helper.make_node("Conv", ["x2", "c2w", "c2b"], ["x3"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["x3"], ["x4"]),
        helper.make_node("MaxPool", ["x4"], ["x5"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["x5"], ["x6"], axis=1),
        helper.make_node("Gemm", ["x6", "l1w", "l1b"], ["x7"], transB=1),
        helper.make_node("Relu", ["x7"], ["x8"]),
        helper.make_node("Gemm", ["x8", "l2w", "l2b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_folder(folder, model.SerializeToString(), features)


def write_folder(folder: Path, data: bytes, features: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(data)
    manifest = {
        "formatVersion": 1,
        "name": MODEL,
        "createdAt": "2026-11-01T00:00:00Z",
        "files": {
            "model.onnx": {"sha256": hashlib.sha256(data).hexdigest(), "sizeBytes": len(data)}
        },
        "serving": {
            "file": "model.onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, features]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, CLASSES]}],
        },
        "quantized": False,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def cnn_request() -> tuple[bytes, int, Any]:
    """A batch-8 request as binary tensors (the JSON answer is small): the body, the length of
    its JSON header, and the batch."""
    import numpy as np

    batch = np.random.default_rng(5).random((CNN_BATCH, CNN_SIDE * CNN_SIDE), dtype=np.float32)
    tensor = {
        "name": "input",
        "datatype": "FP32",
        "shape": list(batch.shape),
        "parameters": {"binary_data_size": batch.nbytes},
    }
    header = json.dumps({"id": "bench", "inputs": [tensor]}).encode()
    return header + batch.tobytes(), len(header), batch


def bench_json_codecs(body: bytes, duration: float) -> tuple[Figures, Figures]:
    """The data plane's JSON work on one request (parse the body, write a 10-logit answer),
    with the standard library and with orjson."""
    import numpy as np
    import orjson

    logits = np.linspace(-1, 1, CLASSES, dtype=np.float32)

    def stdlib() -> bytes:
        json.loads(body)
        document = {"model_name": MODEL, "outputs": [{"data": logits.tolist()}]}
        return json.dumps(document, separators=(",", ":")).encode()

    def fast() -> bytes:
        orjson.loads(body)
        document = {"model_name": MODEL, "outputs": [{"data": logits}]}
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)

    return time_calls(stdlib, duration / 2), time_calls(fast, duration / 2)


def sample_input() -> list[float]:
    return [((i * 37) % 17) / 16.0 for i in range(FEATURES)]


def request_body() -> bytes:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, FEATURES], "data": sample_input()}
    return json.dumps({"id": "bench", "inputs": [tensor]}).encode()


# ---------------------------------------------------------------- in-process baselines


def time_calls(call: Callable[[], Any], duration: float) -> Figures:
    for _ in range(200):
        call()
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + duration
    while (now := time.perf_counter()) < deadline:
        call()
        latencies.append(time.perf_counter() - now)
    return Figures.of(latencies, time.perf_counter() - start)


def bench_onnxruntime(
    folder: Path, duration: float, threads: int, batch: Any = None
) -> tuple[Figures, Any]:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), options)
    if batch is None:
        batch = np.array([sample_input()], dtype=np.float32)
    (expected,) = session.run(["logits"], {"input": batch})
    return time_calls(lambda: session.run(["logits"], {"input": batch}), duration), expected


def bench_torch(module: Any, duration: float, threads: int) -> Figures:
    import torch

    torch.set_num_threads(threads)
    batch = torch.tensor([sample_input()], dtype=torch.float32)

    def call() -> Any:
        with torch.inference_mode():
            return module(batch)

    return time_calls(call, duration)


# ---------------------------------------------------------------- load client (own process)


def _http_request(port: int, path: str, body: bytes, header_length: int | None = None) -> bytes:
    binary = f"Inference-Header-Content-Length: {header_length}\r\n" if header_length else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"{binary}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _status_and_length(head: bytes) -> tuple[int, int]:
    status = int(head.split(b" ", 2)[1])
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    return status, int(match.group(1)) if match else 0


def run_blocking_client(
    port: int, path: str, body: bytes, duration: float, header_length: int | None = None
) -> dict[str, Any]:
    """One connection, one request at a time: the latency of a lone caller."""
    raw = _http_request(port, path, body, header_length)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")

    def once() -> int:
        sock.sendall(raw)
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            head += line
        status, length = _status_and_length(head)
        reader.read(length)
        return status

    latencies, errors, sent = [], 0, 0
    warm_until = time.perf_counter() + min(0.5, duration / 4)
    while time.perf_counter() < warm_until:
        once()
        sent += 1
    start = time.perf_counter()
    deadline = start + duration
    while (now := time.perf_counter()) < deadline:
        ok = once() == 200
        latencies.append(time.perf_counter() - now)
        errors += not ok
    elapsed = time.perf_counter() - start
    sock.close()
    sent += len(latencies)
    return {"latencies": latencies, "elapsed": elapsed, "errors": errors, "sent": sent}


async def run_concurrent_client(
    port: int,
    path: str,
    body: bytes,
    duration: float,
    concurrency: int,
    header_length: int | None = None,
) -> dict[str, Any]:
    """`concurrency` keep-alive connections, each sending its next request on each answer."""
    raw = _http_request(port, path, body, header_length)
    latencies: list[float] = []
    errors = sent = 0
    measuring = asyncio.Event()

    async def client(stop_at: float) -> None:
        nonlocal errors, sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (now := time.perf_counter()) < stop_at:
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                status, length = _status_and_length(head)
                await reader.readexactly(length)
                sent += 1
                if measuring.is_set():
                    latencies.append(time.perf_counter() - now)
                    errors += status != 200
        finally:
            writer.close()

    warm = min(0.5, duration / 4)
    stop_at = time.perf_counter() + warm + duration
    tasks = [asyncio.ensure_future(client(stop_at)) for _ in range(concurrency)]
    await asyncio.sleep(warm)
    measuring.set()
    start = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    return {"latencies": latencies, "elapsed": elapsed, "errors": errors, "sent": sent}


def client_main(args: argparse.Namespace) -> int:
    body = Path(args.body_file).read_bytes()
    length = args.header_length
    if args.concurrency == 1:
        result = run_blocking_client(args.port, args.path, body, args.duration, length)
    else:
        result = asyncio.run(
            run_concurrent_client(
                args.port, args.path, body, args.duration, args.concurrency, length
            )
        )
    json.dump(result, sys.stdout)
    return 0


# One core for the servers, another for the load clients (and the in-process baselines run on
# the servers' core); on a single-core machine nothing is pinned.
# Pinning needs taskset (util-linux); without it nothing is pinned, and the header says so.
PINNABLE = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
SERVER_CPU, CLIENT_CPU = (0, 1) if PINNABLE else (None, None)


def pinned(cpu: int | None, command: list[str]) -> list[str]:
    """The command run on one core (every thread it starts included), through taskset."""
    return command if cpu is None else ["taskset", "--cpu-list", str(cpu), *command]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and every process below it, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier += children
    return sum(times.get(member, 0.0) for member in tree)


def load_from_client_process(
    port: int,
    body_file: Path,
    duration: float,
    concurrency: int,
    header_length: int = 0,
    server_pid: int | None = None,
) -> Figures:
    cpu_before = cpu_seconds(server_pid) if server_pid is not None else 0.0
    done = subprocess.run(
        pinned(
            CLIENT_CPU,
            [
                sys.executable,
                __file__,
                "--client",
                "--port",
                str(port),
                "--path",
                f"/v2/models/{MODEL}/infer",
                "--body-file",
                str(body_file),
                "--duration",
                str(duration),
                "--concurrency",
                str(concurrency),
                "--header-length",
                str(header_length),
            ],
        ),
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    )
    result = json.loads(done.stdout)
    cpu_ms = None
    if server_pid is not None and result["sent"]:
        cpu_ms = (cpu_seconds(server_pid) - cpu_before) / result["sent"] * 1e3
    return Figures.of(result["latencies"], result["elapsed"], result["errors"], cpu_ms)


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise RuntimeError(f"server on port {port} not ready within {timeout} s")


def check_answer(port: int, body: bytes, expected: Any, header_length: int = 0) -> None:
    import numpy as np

    headers = {"Content-Type": "application/json"}
    if header_length:
        headers["Inference-Header-Content-Length"] = str(header_length)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", data=body, headers=headers
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        output = json.loads(response.read())["outputs"][0]
    got = np.array(output["data"], dtype=np.float32).reshape(output["shape"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@dataclass(frozen=True)
class Served:
    port: int
    pid: int  # taskset execs the server: this is the server's own process


@contextlib.contextmanager
def running_server(
    name: str, command: list[str], port: int, check: tuple[bytes, Any, int]
) -> Iterator[Served]:
    """A server process pinned to the servers' core, ready and checked against `check` (body,
    expected output, binary header length); stopped with SIGTERM afterwards."""
    log = Path(tempfile.gettempdir()) / f"bench-{name}-{port}.log"
    with log.open("wb") as sink:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
        process = subprocess.Popen(
            pinned(SERVER_CPU, command), stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    try:
        wait_ready(port, process)
        body, expected, header_length = check
        check_answer(port, body, expected, header_length)
        yield Served(port, process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def fogline_command(folder: Path, port: int, threads: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fogline.workloads.server",
        "--model-dir",
        str(folder),
        "--name",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--log-level",
        "WARNING",
        *extra,
    ]


def interleaved(
    servers: dict[str, Served],
    body_file: Path,
    args: argparse.Namespace,
    clients: int,
    header_length: int = 0,
) -> dict[str, list[Figures]]:
    """`args.rounds` measurements of each server, alternating which goes first."""
    names = list(servers)
    results: dict[str, list[Figures]] = {name: [] for name in names}
    for index in range(args.rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            served = servers[name]
            figures = load_from_client_process(
                served.port, body_file, args.duration, clients, header_length, served.pid
            )
            results[name].append(figures)
    return results


@dataclass(frozen=True)
class Ratios:
    """Per-round ratios of two servers' throughput: their median and range."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, top: list[Figures], bottom: list[Figures]) -> Ratios:
        pairs = zip(top, bottom, strict=True)
        return cls(tuple(a.throughput / b.throughput for a, b in pairs))

    @classmethod
    def of_cpu(cls, top: list[Figures], bottom: list[Figures]) -> Ratios:
        """How many times the CPU per request of `bottom` that of `top` is, per round."""
        pairs = zip(top, bottom, strict=True)
        return cls(tuple((b.cpu_ms or 0.0) / (a.cpu_ms or 1.0) for a, b in pairs))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def __str__(self) -> str:
        rounds = ", ".join(f"{value:.2f}" for value in self.values)
        return (
            f"median {self.median:.2f}x over {len(self.values)} rounds "
            f"(range {min(self.values):.2f}-{max(self.values):.2f}: {rounds})"
        )


def median_round(rounds: list[Figures]) -> Figures:
    """The round whose throughput is the median, as the row to print."""
    ordered = sorted(rounds, key=lambda figures: figures.throughput)
    return ordered[len(ordered) // 2]


# ---------------------------------------------------------------- report


def row(label: str, figures: Figures) -> str:
    errors = f"  errors {figures.errors}" if figures.errors else ""
    cpu = f"  cpu {figures.cpu_ms:.3f} ms/req" if figures.cpu_ms is not None else ""
    return (
        f"  {label:<34} p50 {figures.p50_ms:7.3f} ms   p99 {figures.p99_ms:7.3f} ms   "
        f"{figures.throughput:9.0f} /s   (n={figures.count}){cpu}{errors}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating measurements per compared server"
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime/torch threads")
    parser.add_argument("--kserve-python", default=str(ROOT / ".venv-kserve" / "bin" / "python"))
    parser.add_argument("--skip-kserve", action="store_true")
    parser.add_argument("--skip-cnn", action="store_true")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--body-file", help=argparse.SUPPRESS)
    parser.add_argument("--header-length", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(args)

    import onnxruntime
    import torch

    work = Path(tempfile.mkdtemp(prefix="fogline-bench-"))
    folder = work / "artifact"
    module = build_artifact(folder)
    body_file = work / "request.json"
    body_file.write_bytes(request_body())
    print(
        f"model: MLP {FEATURES}-{HIDDEN}-{HIDDEN}-{CLASSES}, batch 1, JSON tensors; "
        f"{args.duration:.0f} s per figure; {args.threads} inference thread(s); "
        f"{os.cpu_count()} cores; onnxruntime {onnxruntime.__version__}, torch {torch.__version__}"
    )
    placement = (
        f"servers pinned to CPU {SERVER_CPU}, load clients to CPU {CLIENT_CPU}"
        if SERVER_CPU is not None
        else "nothing pinned (one core, or no taskset)"
    )
    print(
        f"{placement}; {args.rounds} alternating rounds per comparison; load average "
        f"{os.getloadavg()[0]:.1f} at start"
    )
    if not args.skip_kserve and Path(args.kserve_python).exists():
        versions = subprocess.run(
            [
                args.kserve_python,
                "-c",
                "from importlib.metadata import version as v; "
                "print('kserve', v('kserve'), 'onnxruntime', v('onnxruntime'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        print(f"KServe side: {versions}")

    if SERVER_CPU is not None:
        os.sched_setaffinity(0, {SERVER_CPU})  # in-process baselines on the servers' core
    in_process, expected = bench_onnxruntime(folder, args.duration, args.threads)
    torch_eager = bench_torch(module, args.duration, args.threads)
    codec_std, codec_fast = bench_json_codecs(request_body(), args.duration)
    if CLIENT_CPU is not None:
        os.sched_setaffinity(0, {CLIENT_CPU})  # the benchmark itself stays off the servers' core
    check = (body_file.read_bytes(), expected, 0)
    c = args.concurrency
    with contextlib.ExitStack() as stack:
        port = free_port()
        servers = {
            "fogline": stack.enter_context(
                running_server(
                    "fogline",
                    fogline_command(folder, port, args.threads),
                    port,
                    check,
                )
            )
        }
        if not args.skip_kserve:
            if not Path(args.kserve_python).exists():
                print(f"KServe skipped: {args.kserve_python} missing; run bench/setup_kserve.sh")
            else:
                port = free_port()
                servers["kserve"] = stack.enter_context(
                    running_server(
                        "kserve",
                        [
                            args.kserve_python,
                            str(ROOT / "bench" / "kserve_onnx_model.py"),
                            "--model-dir",
                            str(folder),
                            "--name",
                            MODEL,
                            "--port",
                            str(port),
                            "--threads",
                            str(args.threads),
                        ],
                        port,
                        check,
                    )
                )
        lone = {
            name: load_from_client_process(served.port, body_file, args.duration, 1, 0, served.pid)
            for name, served in servers.items()
        }
        loaded = interleaved(servers, body_file, args, c)
    fogline = {1: lone["fogline"], c: median_round(loaded["fogline"])}
    kserve = {1: lone["kserve"], c: median_round(loaded["kserve"])} if "kserve" in lone else None
    kserve_ratio = Ratios.of(loaded["fogline"], loaded["kserve"]) if kserve else None
    kserve_cpu = Ratios.of_cpu(loaded["fogline"], loaded["kserve"]) if kserve else None

    cnn: dict[str, Figures] = {}
    cnn_ratio: Ratios | None = None
    cnn_cpu: Ratios | None = None
    cnn_direct: Figures | None = None
    if not args.skip_cnn:
        cnn_folder = work / "cnn"
        build_cnn_artifact(cnn_folder)
        cnn_body, cnn_header_length, cnn_batch = cnn_request()
        cnn_file = work / "cnn-request.json"
        cnn_file.write_bytes(cnn_body)
        if SERVER_CPU is not None:
            os.sched_setaffinity(0, {SERVER_CPU})
        cnn_direct, cnn_expected = bench_onnxruntime(
            cnn_folder, args.duration, args.threads, cnn_batch
        )
        if CLIENT_CPU is not None:
            os.sched_setaffinity(0, {CLIENT_CPU})
        cnn_check = (cnn_body, cnn_expected, cnn_header_length)
        with contextlib.ExitStack() as stack:
            cnn_servers: dict[str, Served] = {}
            for label, max_batch in (("on", "64"), ("off", "1")):
                port = free_port()
                command = fogline_command(
                    cnn_folder, port, args.threads, "--max-batch-size", max_batch
                )
                cnn_servers[label] = stack.enter_context(
                    running_server(f"cnn-{label}", command, port, cnn_check)
                )
            cnn_rounds = interleaved(cnn_servers, cnn_file, args, c, cnn_header_length)
        cnn = {label: median_round(rounds) for label, rounds in cnn_rounds.items()}
        cnn_ratio = Ratios.of(cnn_rounds["on"], cnn_rounds["off"])
        cnn_cpu = Ratios.of_cpu(cnn_rounds["on"], cnn_rounds["off"])

    print("\nfigures (for the servers under load: the round of median throughput)")
    print(row("onnxruntime in-process", in_process))
    print(row("torch eager CPU in-process", torch_eager))
    print(row("fogline serve, 1 client", fogline[1]))
    print(row(f"fogline serve, {c} clients", fogline[c]))
    if kserve:
        print(row("KServe model server, 1 client", kserve[1]))
        print(row(f"KServe model server, {c} clients", kserve[c]))

    print(row("data plane JSON, json module", codec_std))
    print(row("data plane JSON, orjson", codec_fast))
    if cnn and cnn_direct is not None:
        print(f"\nCNN {CNN_SIDE}x{CNN_SIDE}, batch {CNN_BATCH}, binary tensors in, JSON out")
        print(row(f"onnxruntime in-process, batch {CNN_BATCH}", cnn_direct))
        for label, figures in cnn.items():
            print(row(f"fogline, {c} clients, batching {label}", figures))

    print("\nratios")
    overhead = fogline[1].p50_ms - in_process.p50_ms
    verdict = "meets" if overhead <= 0.3 else "misses"
    print(
        f"  fogline p50 - onnxruntime in-process p50: {overhead:+.3f} ms "
        f"({verdict} the 0.3 ms target)"
    )
    print(
        f"  data plane JSON per request, json / orjson: "
        f"{codec_std.p50_ms / codec_fast.p50_ms:.2f}x "
        f"({(codec_std.p50_ms - codec_fast.p50_ms) * 1e3:+.1f} us)"
    )
    if cnn_ratio is not None:
        print(f"  CNN batch {CNN_BATCH}, {c} clients, batching on / off throughput: {cnn_ratio}")
    if cnn_cpu is not None:
        print(f"  CNN batch {CNN_BATCH}, {c} clients, server CPU per request, off / on: {cnn_cpu}")
    print(
        f"  fogline p50 / onnxruntime in-process p50: {fogline[1].p50_ms / in_process.p50_ms:.2f}x"
    )
    print(f"  fogline p50 / torch eager p50: {fogline[1].p50_ms / torch_eager.p50_ms:.2f}x")
    print(f"  torch eager p50 / onnxruntime p50: {torch_eager.p50_ms / in_process.p50_ms:.2f}x")
    print(
        f"  fogline {c}-client throughput / 1-client: "
        f"{fogline[c].throughput / fogline[1].throughput:.2f}x"
    )
    if kserve and kserve_ratio is not None:
        verdict = "meets" if kserve_ratio.median >= 3 else "misses"
        print(
            f"  fogline / KServe throughput, {c} clients: {kserve_ratio} ({verdict} the 3x target)"
        )
    if kserve_cpu is not None:
        verdict = "meets" if kserve_cpu.median >= 3 else "misses"
        print(
            f"  server CPU per request, KServe / fogline, {c} clients: {kserve_cpu} "
            f"({verdict} 3x: the throughput ratio on a core of its own)"
        )
    if kserve:
        print(
            f"  fogline / KServe throughput, 1 client: "
            f"{fogline[1].throughput / kserve[1].throughput:.2f}x"
        )
        print(f"  KServe p50 / fogline p50, 1 client: {kserve[1].p50_ms / fogline[1].p50_ms:.2f}x")
        print(
            f"  KServe p99 / fogline p99, {c} clients: {kserve[c].p99_ms / fogline[c].p99_ms:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
