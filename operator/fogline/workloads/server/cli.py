"""`fogline serve`: parse flags, wire the model, data plane, REST layer and HTTP server together,
load the verified artifact, and shut down gracefully on SIGTERM. The composition root: no
protocol or model logic of its own."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from fogline.workloads.manifest import ArtifactError, parse_digest
from fogline.workloads.server.batching import InferenceRunner
from fogline.workloads.server.dataplane import DataPlane
from fogline.workloads.server.metrics import ServerMetrics
from fogline.workloads.server.model import OnnxModel, RuntimeOptions
from fogline.workloads.server.rest import RestApi, error_response
from fogline.workloads.server.wire import HttpServer, WireHooks, WireLimits

log = logging.getLogger("fogline.serve")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class ServeConfig:
    model_dir: Path
    name: str | None
    host: str
    port: int
    threads: int
    expected_digest: str | None
    max_body_bytes: int
    max_batch_size: int
    shutdown_timeout: float
    idle_timeout: float


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message}\n")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fogline serve",
        description="Serve a verified ONNX artifact over the Open Inference Protocol v2 (REST).",
    )
    parser.add_argument("--model-dir", required=True, type=Path, help="artifact folder")
    parser.add_argument("--name", help="served model name (default: the manifest's name)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port; 0 picks a free one")
    parser.add_argument("--threads", type=_positive, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--expected-digest", help="sha256:HEX the serving file must have")
    parser.add_argument(
        "--max-body-bytes", type=_positive, default=64 * 1024 * 1024, help="request body limit"
    )
    parser.add_argument(
        "--max-batch-size",
        type=_positive,
        default=64,
        help="rows up to which concurrent requests merge into one run (1 turns merging off)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=25.0,
        help="seconds to let requests finish after SIGTERM",
    )
    parser.add_argument(
        "--idle-timeout", type=float, default=75.0, help="keep-alive idle timeout in seconds"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def _config(args: argparse.Namespace) -> ServeConfig:
    if not args.model_dir.is_dir():
        raise ValueError(f"--model-dir {args.model_dir}: no such folder")
    if args.expected_digest is not None:
        parse_digest(args.expected_digest)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: must be within 0..65535")
    return ServeConfig(
        model_dir=args.model_dir,
        name=args.name,
        host=args.host,
        port=args.port,
        threads=args.threads,
        expected_digest=args.expected_digest,
        max_body_bytes=args.max_body_bytes,
        max_batch_size=args.max_batch_size,
        shutdown_timeout=args.shutdown_timeout,
        idle_timeout=args.idle_timeout,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _config(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(serve(config))


async def _load_in_thread(model: OnnxModel) -> None:
    """Load off the event loop so probes get answers meanwhile; a daemon thread never blocks
    exit when SIGTERM arrives mid-load."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def load() -> None:
        try:
            model.load()
        except BaseException as err:  # handed to the loop, which reports it
            loop.call_soon_threadsafe(done.set_exception, err)
        else:
            loop.call_soon_threadsafe(done.set_result, None)

    threading.Thread(target=load, name="model-load", daemon=True).start()
    await done


async def serve(config: ServeConfig) -> int:
    loop = asyncio.get_running_loop()
    metrics = ServerMetrics()
    name = config.name
    if name is None:
        from fogline.workloads.manifest import read_manifest

        try:
            name = read_manifest(config.model_dir).name
        except ArtifactError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_FAILURE
    model = OnnxModel(
        name,
        config.model_dir,
        config.expected_digest,
        RuntimeOptions(intra_op_threads=config.threads),
    )
    dataplane = DataPlane(model)
    api = RestApi(dataplane, metrics, config.max_body_bytes)
    hooks = WireHooks(
        handle=api.handle,
        refuse=error_response,
        in_flight=lambda delta: metrics.in_flight.inc((), delta),
    )
    server = HttpServer(hooks, WireLimits(config.max_body_bytes, config.idle_timeout))
    try:
        port = await server.start(config.host, config.port)
    except OSError as err:
        print(
            f"error: cannot listen on {config.host}:{config.port}: {err.strerror}", file=sys.stderr
        )
        return EXIT_FAILURE
    log.info("listening on http://%s:%d", config.host, port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics.model_ready.set((name,), 0)

    loading = asyncio.ensure_future(_load_in_thread(model))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not loading.done():
        log.info("stopped while loading the model")
        stopping.cancel()
        await server.shutdown(0)
        return EXIT_OK
    error = loading.exception()
    if error is not None:
        stopping.cancel()
        await server.shutdown(0)
        print(f"error: model {name!r} not served: {error}", file=sys.stderr)
        return EXIT_FAILURE

    runner = InferenceRunner(
        model,
        loop,
        config.max_batch_size,
        observe_batch=lambda seconds, rows: _observe_run(metrics, name, seconds, rows),
    )
    runner.start()
    dataplane.runner = runner
    metrics.load_seconds.set((name,), model.load_seconds)
    metrics.model_info.set(
        (
            name,
            model.version,
            model.digest,
            model.manifest.serving.file if model.manifest else "",
            str(model.manifest.quantized if model.manifest else False).lower(),
        ),
        1,
    )
    metrics.model_ready.set((name,), 1)
    log.info(
        "model %r ready: %s (%s) verified and loaded in %.3f s",
        name,
        model.digest,
        model.manifest.serving.file if model.manifest else "",
        model.load_seconds,
    )

    await stopping
    log.info("SIGTERM: draining (up to %.0f s)", config.shutdown_timeout)
    dataplane.draining = True
    metrics.model_ready.set((name,), 0)
    drained = await server.shutdown(config.shutdown_timeout)
    runner.stop()
    if not drained:
        log.warning("shutdown deadline passed with requests still running; they were cut off")
    log.info("stopped")
    return EXIT_OK


def _observe_run(metrics: ServerMetrics, name: str, seconds: float, rows: int) -> None:
    metrics.inference_seconds.observe((name,), seconds)
    metrics.batch_rows.observe((name,), rows)
