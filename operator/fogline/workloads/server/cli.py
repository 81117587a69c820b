"""`fogline serve`: parse flags, wire the model, data plane, REST layer and HTTP server together,
load the verified artifact, and shut down gracefully on SIGTERM. The composition root: no
protocol or model logic of its own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal
import ssl
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from fogline.cli import UsageParser
from fogline.workloads.manifest import ArtifactError, parse_digest
from fogline.workloads.server.batching import InferenceRunner
from fogline.workloads.server.dataplane import DataPlane
from fogline.workloads.server.metrics import ServerMetrics
from fogline.workloads.server.model import OnnxModel, RuntimeOptions
from fogline.workloads.server.rest import RestApi, error_response
from fogline.workloads.server.wire import HttpServer, TlsFiles, WireHooks, WireLimits

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
    max_batch_size: int
    max_queue: int
    limits: WireLimits
    drain_seconds: float
    shutdown_timeout: float
    tls: TlsFiles | None = None
    token: str | None = None
    model_key_file: Path | None = None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds, 0 or more")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
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
        "--max-batch-size",
        type=_positive,
        default=64,
        help="rows up to which concurrent requests merge into one run (1 turns merging off)",
    )
    parser.add_argument(
        "--max-queue",
        type=_positive,
        default=256,
        help="requests that may wait for the model; past it 503 with Retry-After",
    )
    limits = WireLimits()
    parser.add_argument(
        "--max-body-bytes", type=_positive, default=limits.max_body_bytes, help="body limit (413)"
    )
    parser.add_argument(
        "--max-header-line-bytes",
        type=_positive,
        default=limits.max_line_bytes,
        help="request line (414) and each header field (431) limit",
    )
    parser.add_argument(
        "--max-header-bytes",
        type=_positive,
        default=limits.max_header_bytes,
        help="all header fields together (431)",
    )
    parser.add_argument(
        "--max-headers", type=_positive, default=limits.max_headers, help="header count (431)"
    )
    parser.add_argument(
        "--request-head-timeout",
        type=_positive_seconds,
        default=limits.head_timeout,
        help="seconds a client has to send a request head (408)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_positive_seconds,
        default=limits.idle_timeout,
        help="keep-alive idle seconds; also how long a response may wait for its reader",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive,
        default=limits.max_connections,
        help="open connections; past it a new one gets 503 and is closed",
    )
    parser.add_argument(
        "--max-body-bytes-in-flight",
        type=_positive,
        help="request body bytes held at once over all connections; past it 503 with "
        "Retry-After; a compressed body counts as received and again inflated (default: "
        f"{limits.max_body_bytes_in_flight}, or --max-body-bytes when that is larger)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=_seconds,
        default=5.0,
        help="after SIGTERM: seconds to keep serving while readiness says 503",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        default=20.0,
        help="after the drain: seconds requests under way may take",
    )
    parser.add_argument("--tls-cert-file", type=Path, help="PEM certificate (chain): serve HTTPS")
    parser.add_argument("--tls-key-file", type=Path, help="PEM private key of --tls-cert-file")
    parser.add_argument(
        "--auth-token-file",
        type=Path,
        help="file holding a bearer token the inference and metadata endpoints require",
    )
    parser.add_argument(
        "--model-key-file",
        type=Path,
        help="AES-256 key (32 raw bytes) of an encrypted artifact, opened in memory only",
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
    if (args.tls_cert_file is None) != (args.tls_key_file is None):
        raise ValueError("--tls-cert-file and --tls-key-file go together; give both or neither")
    tls = None
    if args.tls_cert_file is not None:
        for flag, path in (
            ("--tls-cert-file", args.tls_cert_file),
            ("--tls-key-file", args.tls_key_file),
        ):
            if not path.is_file():
                raise ValueError(f"{flag} {path}: no such file")
        tls = TlsFiles(str(args.tls_cert_file), str(args.tls_key_file))
    token = None
    if args.auth_token_file is not None:
        try:
            token = args.auth_token_file.read_text().strip()
        except OSError as err:
            raise ValueError(f"--auth-token-file {args.auth_token_file}: {err.strerror}") from None
        if not token:
            raise ValueError(f"--auth-token-file {args.auth_token_file}: the file is empty")
    return ServeConfig(
        model_dir=args.model_dir,
        name=args.name,
        host=args.host,
        port=args.port,
        threads=args.threads,
        expected_digest=args.expected_digest,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        limits=WireLimits(
            max_body_bytes=args.max_body_bytes,
            max_line_bytes=args.max_header_line_bytes,
            max_header_bytes=args.max_header_bytes,
            max_headers=args.max_headers,
            head_timeout=args.request_head_timeout,
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
            max_body_bytes_in_flight=args.max_body_bytes_in_flight
            or max(WireLimits.max_body_bytes_in_flight, args.max_body_bytes),
        ),
        drain_seconds=args.drain_seconds,
        shutdown_timeout=args.shutdown_timeout,
        tls=tls,
        token=token,
        model_key_file=args.model_key_file,
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


# Descriptors kept for what is not a client: the model files, the log, threads' pipes.
RESERVED_FDS = 64


def _connection_limit(wanted: int) -> int:
    """Raise the soft descriptor limit to the hard one, and keep the connection cap under it,
    so that the cap (a quiet 503) trips before accept() fails for want of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    room = max(1, soft - RESERVED_FDS)
    if wanted > room:
        log.warning(
            "--max-connections %d does not fit the descriptor limit of %d; using %d",
            wanted,
            soft,
            room,
        )
        return room
    return wanted


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
        RuntimeOptions(intra_op_threads=config.threads, model_key_file=config.model_key_file),
    )
    codec = ThreadPoolExecutor(max_workers=2, thread_name_prefix="codec")
    dataplane = DataPlane(model, codec)
    api = RestApi(dataplane, metrics, config.limits.max_body_bytes, config.token)
    hooks = WireHooks(
        handle=api.handle,
        refuse=error_response,
        in_flight=metrics.in_flight.inc,
        connection_refused=lambda reason: metrics.connections_refused.labels(reason).inc(),
        refused_request=lambda status: metrics.refused.labels(str(status)).inc(),
    )
    limits = replace(
        config.limits, max_connections=_connection_limit(config.limits.max_connections)
    )
    server = HttpServer(hooks, limits, config.tls)
    metrics.connections.set_function(lambda: float(server.open_connections))
    metrics.body_bytes.set_function(lambda: float(server.body_bytes))
    try:
        port = await server.start(config.host, config.port)
    except OSError as err:
        print(
            f"error: cannot listen on {config.host}:{config.port}: {err.strerror}", file=sys.stderr
        )
        return EXIT_FAILURE
    except ssl.SSLError as err:
        print(f"error: cannot use the TLS certificate and key: {err}", file=sys.stderr)
        return EXIT_FAILURE
    scheme = "https" if config.tls else "http"
    log.info("listening on %s://%s:%d", scheme, config.host, port)
    # SIGTERM (Kubernetes replacing the pod) drains first; SIGINT, or a second signal, stops
    # without waiting for the drain period.
    terminated = asyncio.Event()
    interrupted = asyncio.Event()

    def on_signal(signum: int) -> None:
        if signum == signal.SIGINT or terminated.is_set():
            interrupted.set()
        terminated.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    metrics.model_ready.labels(name).set(0)

    loading = asyncio.ensure_future(_load_in_thread(model))
    stopping = asyncio.ensure_future(terminated.wait())
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
        max_queue=config.max_queue,
        on_rejected=metrics.queue_rejected.inc,
        on_cancelled=metrics.queue_cancelled.inc,
        requests_in_flight=lambda: server.in_flight,
    )
    runner.start()
    dataplane.runner = runner
    metrics.watch_queue(lambda: runner.depth)
    metrics.load_seconds.labels(name).set(model.load_seconds)
    metrics.model_info.labels(
        name,
        model.version,
        model.digest,
        model.manifest.serving.file if model.manifest else "",
        str(model.manifest.quantized if model.manifest else False).lower(),
    ).set(1)
    metrics.model_ready.labels(name).set(1)
    log.info(
        "model %r ready: %s (%s) verified and loaded in %.3f s",
        name,
        model.digest,
        model.manifest.serving.file if model.manifest else "",
        model.load_seconds,
    )

    await stopping
    # Readiness turns 503 at once, but the endpoints that route to this pod learn of it only
    # through probes and watches: keep serving (every answer saying `Connection: close`, so
    # clients reconnect elsewhere) for the drain period, then stop accepting.
    dataplane.draining = True
    server.draining = True
    metrics.model_ready.labels(name).set(0)
    drain = 0.0 if interrupted.is_set() else config.drain_seconds
    log.info(
        "SIGTERM: draining: serving %.1f s more, then up to %.0f s for requests under way",
        drain,
        config.shutdown_timeout,
    )
    if drain > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(interrupted.wait(), drain)
    drained = await server.shutdown(config.shutdown_timeout)
    runner.stop()
    codec.shutdown(wait=False, cancel_futures=True)
    if not drained:
        log.warning("shutdown deadline passed with requests still running; they were cut off")
    log.info("stopped")
    return EXIT_OK


def _observe_run(metrics: ServerMetrics, name: str, seconds: float, rows: int) -> None:
    metrics.inference_seconds.labels(name).observe(seconds)
    metrics.batch_rows.labels(name).observe(rows)
