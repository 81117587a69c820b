"""Side by side, in one run: the two mature asyncio HTTP/1.1 stacks the inference server could sit
on, each answering a 1.3 KB JSON POST with a small JSON body (no model), loaded from a separate
client process on loopback: aiohttp's low-level server (llhttp parser) and uvicorn with httptools
and a bare ASGI app. The server uses aiohttp; this is the measurement behind that choice.

    .venv/bin/pip install uvicorn httptools   # not a dependency of the project
    .venv/bin/python bench/bench_http_stacks.py --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import Figures, free_port, request_body, row

ANSWER = json.dumps({"model_name": "digits", "outputs": [{"data": [0.0] * 10}]}).encode()


def serve_aiohttp(port: int) -> None:
    from aiohttp import web

    async def handle(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def main() -> None:
        server = web.Server(handle)
        loop = asyncio.get_running_loop()
        await loop.create_server(server, "127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_uvicorn(port: int) -> None:
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(ANSWER)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ANSWER})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


def load(port: int, body_file: Path, duration: float, clients: int) -> Figures:
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parent / "bench_server.py"),
            "--client",
            "--port",
            str(port),
            "--path",
            "/v2/models/digits/infer",
            "--body-file",
            str(body_file),
            "--duration",
            str(duration),
            "--concurrency",
            str(clients),
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load client failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    return Figures.of(result["latencies"], result["elapsed"], result["errors"])


def wait_listening(port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--serve", choices=["aiohttp", "uvicorn"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "aiohttp":
        serve_aiohttp(args.port)
        return 0
    if args.serve == "uvicorn":
        serve_uvicorn(args.port)
        return 0
    body_file = Path(tempfile.mkdtemp(prefix="fogline-stacks-")) / "request.json"
    body_file.write_bytes(request_body())
    results: dict[str, dict[int, Figures]] = {}
    for stack in ("aiohttp", "uvicorn"):
        if stack == "uvicorn":
            try:
                import httptools  # noqa: F401
                import uvicorn  # noqa: F401
            except ImportError:
                print("uvicorn skipped: pip install uvicorn httptools")
                continue
        port = free_port()
        env = {**os.environ}
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve", stack, "--port", str(port)], env=env
        )
        try:
            wait_listening(port)
            results[stack] = {
                clients: load(port, body_file, args.duration, clients)
                for clients in (1, args.concurrency)
            }
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
    c = args.concurrency
    print(f"\nfigures ({os.cpu_count()} cores, {args.duration:.0f} s each)")
    for stack, figures in results.items():
        print(row(f"{stack}, 1 client", figures[1]))
        print(row(f"{stack}, {c} clients", figures[c]))
    if len(results) == 2:
        a, u = results["aiohttp"], results["uvicorn"]
        print("\nratios")
        print(
            f"  aiohttp / uvicorn throughput, {c} clients: {a[c].throughput / u[c].throughput:.2f}x"
        )
        print(f"  aiohttp p50 - uvicorn p50, 1 client: {a[1].p50_ms - u[1].p50_ms:+.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
