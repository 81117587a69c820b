"""A lean HTTP/1.1 server on asyncio: keep-alive, pipelining, Content-Length bodies with a size
limit, `Expect: 100-continue`, and a draining shutdown. It parses bytes into Request objects and
writes Responses; what a path means is the REST layer's business."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
# Beyond this a refused body is not worth reading just to keep the connection alive.
MAX_DISCARD_BYTES = 1 << 30


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class WireLimits:
    max_body_bytes: int = 64 * 1024 * 1024
    idle_timeout: float = 75.0  # keep-alive idle time, and the time a client has to send a request


@dataclass
class WireHooks:
    """What the wire needs from the layer above it."""

    handle: Callable[[Request], Awaitable[Response]]
    # A response for a request the wire itself refuses (oversize, malformed, unsupported).
    refuse: Callable[[int, str], Response]
    in_flight: Callable[[int], None] = field(default=lambda delta: None)


_REASONS = {status.value: status.phrase for status in HTTPStatus}


def _encode(response: Response, close: bool, http10: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
    ]
    lines += [f"{name}: {value}" for name, value in response.headers]
    if close:
        lines.append("Connection: close")
    elif http10:
        lines.append("Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._hooks = server.hooks
        self._limits = server.limits
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy = False  # a request is being handled; later ones wait in the buffer
        self._closing = False  # answer what is under way, then close
        self._discard = 0  # bytes of a refused body still to skip
        self._head: tuple[str, str, str, bool, dict[str, str], int] | None = None
        self._continue_sent = False
        self._idle_timer: asyncio.TimerHandle | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server.connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._cancel_idle_timer()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._discard:
            skipped = min(self._discard, len(data))
            self._discard -= skipped
            data = data[skipped:]
        self._buffer += data
        if not self._busy:
            self._process()

    # request framing

    @property
    def idle(self) -> bool:
        return not self._busy and not self._buffer and self._head is None and not self._discard

    def begin_close(self) -> None:
        """Stop after the request under way (if any); close now when idle."""
        self._closing = True
        if self.idle and self._transport is not None:
            self._transport.close()

    def _process(self) -> None:
        while not self._busy and self._transport is not None and not self._discard:
            if self._head is None:
                outcome = self._parse_head()
                if outcome == "refused":
                    continue  # the connection may live on, with the next request buffered
                if outcome == "wait":
                    return
            assert self._head is not None
            method, path, query, http10, headers, length = self._head
            if len(self._buffer) < length:
                if headers.get("expect", "").lower() == "100-continue" and not self._continue_sent:
                    self._continue_sent = True
                    self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            body = bytes(self._buffer[:length])
            del self._buffer[:length]
            self._head = None
            self._continue_sent = False
            close = (
                self._closing
                or headers.get("connection", "").lower() == "close"
                or (http10 and headers.get("connection", "").lower() != "keep-alive")
            )
            self._busy = True
            self._cancel_idle_timer()
            request = Request(method, path, query, headers, body)
            self._loop.create_task(self._respond(request, close, http10))

    def _parse_head(self) -> str:
        """Parse a request head from the buffer: "parsed", "wait" (need bytes) or "refused"."""
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self._refuse(431, "request head exceeds 65536 bytes", close=True)
                return "refused"
            return "wait"
        text = self._buffer[:end].decode("latin-1")
        del self._buffer[: end + 4]
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[1].startswith("/"):
            self._refuse(400, f"malformed request line {lines[0][:100]!r}", close=True)
            return "refused"
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            self._refuse(505, f"{version[:20]!r} is not supported; use HTTP/1.1", close=True)
            return "refused"
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                self._refuse(400, f"malformed header line {line[:100]!r}", close=True)
                return "refused"
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            self._refuse(
                501, "Transfer-Encoding is not supported; send a Content-Length", close=True
            )
            return "refused"
        raw_length = headers.get("content-length", "0")
        if not raw_length.isdigit():
            self._refuse(400, f"Content-Length {raw_length[:30]!r} is not a number", close=True)
            return "refused"
        length = int(raw_length)
        if length > self._limits.max_body_bytes:
            message = (
                f"request body of {length} bytes exceeds the limit of "
                f"{self._limits.max_body_bytes} bytes (--max-body-bytes)"
            )
            # Skip the body and keep the connection unless the client waits for 100-continue
            # (it will not send the body) or the body is too big to be worth reading.
            expecting = headers.get("expect", "").lower() == "100-continue"
            keep = not expecting and length <= MAX_DISCARD_BYTES
            taken = min(length, len(self._buffer)) if keep else 0
            del self._buffer[:taken]
            self._discard = length - taken if keep else 0
            self._refuse(413, message, close=not keep)
            return "refused"
        path, _, query = target.partition("?")
        self._head = (method, path, query, version == "HTTP/1.0", headers, length)
        return "parsed"

    def _refuse(self, status: int, message: str, close: bool) -> None:
        if self._transport is None:
            return
        self._transport.write(_encode(self._hooks.refuse(status, message), close, False))
        if close:
            self._buffer.clear()
            self._transport.close()
            self._transport = None

    # responding

    async def _respond(self, request: Request, close: bool, http10: bool) -> None:
        self._hooks.in_flight(1)
        try:
            response = await self._hooks.handle(request)
        except Exception:  # a bug above the wire must not wedge the connection
            log.exception("unhandled error answering %s %s", request.method, request.path)
            response = self._hooks.refuse(500, "internal server error")
            close = True
        finally:
            self._hooks.in_flight(-1)
        close = close or self._closing
        if self._transport is not None:
            self._transport.write(_encode(response, close, http10))
            if close:
                self._transport.close()
                self._transport = None
        self._busy = False
        if self._transport is not None:
            self._arm_idle_timer()
            if self._buffer or self._discard:
                self._process()

    def _arm_idle_timer(self) -> None:
        self._cancel_idle_timer()
        self._idle_timer = self._loop.call_later(self._limits.idle_timeout, self._idle_expired)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if self._transport is not None and not self._busy:
            self._transport.close()
            self._transport = None


class HttpServer:
    def __init__(self, hooks: WireHooks, limits: WireLimits) -> None:
        self.hooks = hooks
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=1024
        )
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def shutdown(self, timeout: float) -> bool:
        """Stop accepting, let requests under way finish, close connections.

        Returns False when some requests were still running at the deadline (then cut off).
        """
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + timeout
        for connection in list(self.connections):
            connection.begin_close()
        while self.connections:
            for connection in list(self.connections):
                if connection.idle:
                    connection.begin_close()
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(remaining, 0.02))
        drained = not self.connections
        for connection in list(self.connections):
            connection.abort()
        return drained
