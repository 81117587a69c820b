"""The operator's own Prometheus metrics: reconciles by kind and outcome, their duration,
API requests and Events posted, served as text on a port of their own (kopf's liveness
server cannot carry other routes)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class OperatorMetrics:
    reconciles: Counter[tuple[str, str]] = field(default_factory=Counter)
    reconcile_seconds: dict[str, float] = field(default_factory=dict)
    events: Counter[tuple[str, str]] = field(default_factory=Counter)
    api_requests: int = 0

    @contextlib.contextmanager
    def reconciling(self, kind: str) -> Iterator[None]:
        """Count one reconcile of `kind` and its duration; an exception counts as an error."""
        started = time.monotonic()
        result = "error"
        try:
            yield
            result = "ok"
        finally:
            self.reconciles[(kind, result)] += 1
            self.reconcile_seconds[kind] = (
                self.reconcile_seconds.get(kind, 0.0) + time.monotonic() - started
            )

    def render(self) -> str:
        lines = [
            "# HELP fogline_reconciles_total Reconciles run, by kind and outcome.",
            "# TYPE fogline_reconciles_total counter",
        ]
        lines += [
            f'fogline_reconciles_total{{kind="{kind}",result="{result}"}} {count}'
            for (kind, result), count in sorted(self.reconciles.items())
        ]
        lines += [
            "# HELP fogline_reconcile_seconds_total Time spent reconciling, by kind.",
            "# TYPE fogline_reconcile_seconds_total counter",
        ]
        lines += [
            f'fogline_reconcile_seconds_total{{kind="{kind}"}} {seconds:.6f}'
            for kind, seconds in sorted(self.reconcile_seconds.items())
        ]
        lines += [
            "# HELP fogline_events_total Kubernetes Events posted, by type and reason.",
            "# TYPE fogline_events_total counter",
        ]
        lines += [
            f'fogline_events_total{{type="{type_}",reason="{reason}"}} {count}'
            for (type_, reason), count in sorted(self.events.items())
        ]
        lines += [
            "# HELP fogline_api_requests_total Requests the controllers sent to the API server.",
            "# TYPE fogline_api_requests_total counter",
            f"fogline_api_requests_total {self.api_requests}",
        ]
        return "\n".join(lines) + "\n"


async def serve_metrics(metrics: OperatorMetrics, host: str, port: int) -> asyncio.Server:
    """A minimal HTTP/1.0 responder for GET /metrics (anything else is 404)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path == b"/metrics":
                body, status = metrics.render().encode(), b"200 OK"
                kind = b"text/plain; version=0.0.4"
            else:
                body, status, kind = b"not found\n", b"404 Not Found", b"text/plain"
            writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Type: " + kind
                         + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # a scraper that hung up or sent garbage gets nothing
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port)
