"""HTTP/1.1 for the inference server, on aiohttp's low-level server and its llhttp parser. It
turns requests into Request objects and Responses into bytes; what a path means is the REST
layer's business.

aiohttp rather than uvicorn with httptools: the two answer a small JSON POST equally fast here
(bench/bench_http_stacks.py, side by side), and aiohttp already enforces most of what a server
that strangers can reach needs: a strict request parser (conflicting or duplicate
Content-Length, Content-Length with Transfer-Encoding, obs-fold, bare LF and NUL in a header
are 400s), limits on the request line, on each header field and on the header count, a bounded
queue of pipelined requests (it stops reading past it), and back-pressure on every response it
writes. It is also already installed with the operator. What it lacks is added here on its
protocol's hooks, and only that: a deadline for the request head (408), a total header size
(431), a cap on open connections (503), a deadline for a client that stops reading responses,
JSON error bodies without a traceback per bad request in the log, `Connection: close` while
draining, and an accept loop that stays quiet at the file-descriptor limit."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

log = logging.getLogger(__name__)

# A body this many times over the limit is not worth reading just to keep the connection.
DISCARD_FACTOR = 4
FD_WARNING_INTERVAL = 60.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # case-insensitive names; singletons were checked
    body: bytes
    # Takes `size` more bytes of the server's budget for request bodies until the answer is
    # written (an inflated body); False when they do not fit.
    hold: Callable[[int], bool] = field(default=lambda size: True)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class WireLimits:
    max_body_bytes: int = 64 * 1024 * 1024
    max_line_bytes: int = 8190  # the request line, and each header field (name and value)
    max_header_bytes: int = 64 * 1024  # all header fields together
    max_headers: int = 100
    head_timeout: float = 10.0  # from the first byte of a request (or the connection) to its head
    idle_timeout: float = 75.0  # keep-alive idle time; also how long a client may stop reading
    max_connections: int = 1024
    # Request bodies held at once over all connections, from their first byte until the answer
    # is written; past it 503 with Retry-After. A compressed body counts twice: as received and
    # once inflated.
    max_body_bytes_in_flight: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                f"--max-body-bytes-in-flight {self.max_body_bytes_in_flight} is below "
                f"--max-body-bytes {self.max_body_bytes}: one request of the largest allowed "
                "body could never be served; raise the first or lower the second"
            )


@dataclass(frozen=True)
class TlsFiles:
    cert_file: str
    key_file: str


@dataclass
class WireHooks:
    """What the wire needs from the layer above it."""

    handle: Callable[[Request], Awaitable[Response]]
    # A response for a request the wire itself refuses (oversize, malformed, too slow).
    refuse: Callable[[int, str], Response]
    in_flight: Callable[[int], None] = field(default=lambda delta: None)
    # (reason) for a connection refused or cut: "limit", "head_timeout", "write_timeout".
    connection_refused: Callable[[str], None] = field(default=lambda reason: None)
    # A request refused before the REST layer saw it, by status.
    refused_request: Callable[[int], None] = field(default=lambda status: None)


# Header names whose value the layers above read once: a second copy is a client error rather
# than something to guess about (aiohttp's parser already refuses duplicate Content-Length).
SINGLETONS = ("content-encoding", "inference-header-content-length", "authorization", "expect")


class _RefusedError(Exception):
    """A request refused while its body arrives: the answer, and whether to close."""

    def __init__(self, response: Response, close: bool = True) -> None:
        super().__init__(response.status)
        self.response = response
        self.close = close


def raw_response(refusal: Response) -> bytes:
    """A whole response with `Connection: close`, for the moments there is no request object
    to answer through aiohttp (a refused connection, a request head that never came)."""
    reason = HTTPStatus(refusal.status).phrase
    lines = [
        f"HTTP/1.1 {refusal.status} {reason}",
        f"Content-Type: {refusal.content_type}",
        f"Content-Length: {len(refusal.body)}",
        *(f"{name}: {value}" for name, value in refusal.headers),
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + refusal.body


class _Connection(RequestHandler):
    """aiohttp's protocol plus the connection cap, the head deadline and the write deadline."""

    def __init__(self, server: HttpServer, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, loop=server.loop, **kwargs)
        self._wire = server
        self._refused = False
        self._counted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_count = 0  # requests parsed when the head timer was armed
        self._receiving = False  # bytes of a request head came, the head is not complete
        self._write_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        wire = self._wire
        if wire.open_connections >= wire.limits.max_connections:
            self._refused = True
            wire.hooks.connection_refused("limit")
            assert isinstance(transport, asyncio.Transport)
            transport.write(wire.busy_response)
            transport.close()
            return
        wire.open_connections += 1
        self._counted = True
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        if self._counted:
            self._counted = False
            self._wire.open_connections -= 1
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        # Waiting for a request: its first bytes start the clock on the rest of its head.
        count = self._request_count
        waiting = self._waiter is not None and not self._waiter.done()
        if waiting and self._head_timer is None:
            self._arm_head_timer()
        super().data_received(data)
        if self._request_count != count:
            self._receiving = False
        elif waiting and data:
            self._receiving = True
        if self._head_timer is not None and self._request_count != self._head_count:
            self._head_timer.cancel()
            self._head_timer = None

    @property
    def idle(self) -> bool:
        """Waiting for a request with none of it received: safe to close at shutdown."""
        waiting = self._waiter is not None and not self._waiter.done()
        return waiting and not self._receiving and not self._messages

    def _arm_head_timer(self) -> None:
        self._head_count = self._request_count
        self._head_timer = self._loop.call_later(self._wire.limits.head_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        if self._request_count != self._head_count or self.transport is None:
            return
        self._wire.hooks.connection_refused("head_timeout")
        self._wire.hooks.refused_request(408)
        message = (
            f"the request head did not arrive within {self._wire.limits.head_timeout:g} s "
            "(--request-head-timeout)"
        )
        self.transport.write(raw_response(self._wire.hooks.refuse(408, message)))
        self.force_close()

    # A client that stops reading: the transport pauses us past its high-water mark, and a
    # response that cannot be written within the idle timeout ends the connection.

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self._loop.call_later(
                self._wire.limits.idle_timeout, self._write_stalled
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        self._write_timer = None
        if self.transport is not None and self.writing_paused:
            self._wire.hooks.connection_refused("write_timeout")
            self.transport.abort()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._write_timer = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request the parser refused, or a bug above the wire: a JSON error, and one debug
        line rather than a traceback per request (the log is not a client's to fill)."""
        if status == 500:
            log.error("unhandled error answering a request", exc_info=exc)
            text = "internal server error"
        else:
            log.debug("refused a malformed request: %s", exc)
            detail = exc.message if isinstance(exc, HttpProcessingError) else message
            status, text = _parser_refusal(exc, status, f"malformed HTTP request: {detail}")
        self._wire.hooks.refused_request(status)
        response = _to_aiohttp(self._wire.hooks.refuse(status, text[:300]))
        response.force_close()
        return response


def _parser_refusal(exc: BaseException | None, status: int, text: str) -> tuple[int, str]:
    """414 for a request target over the line limit, 431 for a header field over it or too
    many headers (the parser reports all of them as 400), with a message naming the flag."""
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        limit = exc.args[1] if len(exc.args) > 1 else "?"
        if isinstance(line, bytes | bytearray | str) and line[:1] in (b"/", "/", b"h", "h"):
            return 414, f"request target over {limit} bytes (--max-header-line-bytes)"
        return 431, f"a header field over {limit} bytes (--max-header-line-bytes)"
    if isinstance(exc, HttpProcessingError) and "Too many headers" in exc.message:
        return 431, "Too many headers (--max-headers)"
    return status, text


def _to_aiohttp(response: Response) -> web.Response:
    headers = {"Content-Type": response.content_type, "Server": "fogline"}
    headers.update(response.headers)
    return web.Response(status=response.status, body=response.body, headers=headers)


class _Held:
    """One request's share of the server's budget for request bodies, returned when the
    request is answered (or cancelled)."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.bytes = 0

    def reserve(self, more: int) -> None:
        if not self.try_reserve(more):
            raise _RefusedError(self.server.busy_with_bodies())

    def try_reserve(self, more: int) -> bool:
        server = self.server
        if more <= 0:
            return True
        if server.body_bytes + more > server.limits.max_body_bytes_in_flight:
            return False
        server.body_bytes += more
        self.bytes += more
        return True

    def release(self) -> None:
        self.server.body_bytes -= self.bytes
        self.bytes = 0


class HttpServer:
    def __init__(self, hooks: WireHooks, limits: WireLimits, tls: TlsFiles | None = None) -> None:
        self.hooks = hooks
        self.limits = limits
        self.tls = tls
        self.loop = asyncio.get_running_loop()
        self.open_connections = 0
        self.in_flight = 0
        self.body_bytes = 0  # held by requests under way (max_body_bytes_in_flight)
        self.draining = False  # answer with `Connection: close` so clients move elsewhere
        busy = hooks.refuse(503, f"the server holds {limits.max_connections} connections")
        self.busy_response = raw_response(
            Response(busy.status, busy.body, busy.content_type, (("Retry-After", "1"),))
        )
        self._fd_warned_at: float | None = None
        self._fd_refusals = 0
        self._listener: asyncio.Server | None = None
        self._http = web.Server(
            self._handle,
            handler_cancellation=True,  # a client that goes away cancels its request
            loop=self.loop,
        )

    def _protocol(self) -> _Connection:
        return _Connection(
            self,
            self._http,
            keepalive_timeout=self.limits.idle_timeout,
            max_line_size=self.limits.max_line_bytes,
            max_field_size=self.limits.max_line_bytes,
            max_headers=self.limits.max_headers,
            lingering_time=min(5.0, self.limits.idle_timeout),
            access_log=None,
            auto_decompress=False,  # Content-Encoding is the REST layer's, within its limit
        )

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        self.loop.set_exception_handler(self._loop_exception)
        self._listener = await self.loop.create_server(
            self._protocol, host, port, reuse_address=True, backlog=1024, ssl=context
        )
        sockets = self._listener.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio reports each failed accept (EMFILE at the descriptor limit) with a traceback
        and retries a second later; one warning a minute says the same without the flood."""
        # asyncio retries a failed accept a second later; when the listener has closed meanwhile
        # (shutdown), that retry fails on the closed socket's descriptor (-1): not an error.
        closed = self._listener is not None and not self._listener.is_serving()
        if closed and isinstance(context.get("exception"), ValueError):
            log.debug("accept retry after the listener closed: %s", context.get("exception"))
            return
        if not str(context.get("message", "")).startswith("socket.accept() out of system"):
            loop.default_exception_handler(context)
            return
        self._fd_refusals += 1
        self.hooks.connection_refused("fd_limit")
        now = time.monotonic()
        if self._fd_warned_at is None or now - self._fd_warned_at > FD_WARNING_INTERVAL:
            self._fd_warned_at = now
            log.warning(
                "out of file descriptors with %d connections open (%s): new connections "
                "wait in the backlog until some close; %d refused accepts so far",
                self.open_connections,
                context.get("exception"),
                self._fd_refusals,
            )

    async def _handle(self, raw: web.BaseRequest) -> web.StreamResponse:
        self.in_flight += 1
        self.hooks.in_flight(1)
        try:
            response, close = await self._answer(raw)
        finally:
            self.in_flight -= 1
            self.hooks.in_flight(-1)
        answer = _to_aiohttp(response)
        if close or self.draining:
            answer.force_close()
        return answer

    async def _answer(self, raw: web.BaseRequest) -> tuple[Response, bool]:
        limits = self.limits
        refuse = self.hooks.refuse
        header_bytes = sum(len(name) + len(value) + 4 for name, value in raw.raw_headers)
        if header_bytes > limits.max_header_bytes:
            self.hooks.refused_request(431)
            message = (
                f"request headers of {header_bytes} bytes exceed the limit of "
                f"{limits.max_header_bytes} bytes (--max-header-bytes)"
            )
            return refuse(431, message), True
        headers = raw.headers
        for name in SINGLETONS:
            if len(headers.getall(name, ())) > 1:
                self.hooks.refused_request(400)
                return refuse(400, f"header {name!r} appears more than once"), True
        length = raw.content_length
        expecting = headers.get("expect", "").lower() == "100-continue"
        if length is not None and length > limits.max_body_bytes:
            self.hooks.refused_request(413)
            message = (
                f"request body of {length} bytes exceeds the limit of "
                f"{limits.max_body_bytes} bytes (--max-body-bytes)"
            )
            # aiohttp skips what is left of the body so the connection lives on, unless the
            # client waits for 100-continue or the body is too big to be worth reading.
            close = expecting or length > DISCARD_FACTOR * limits.max_body_bytes
            return refuse(413, message), close
        held = _Held(self)
        try:
            # A body's length is reserved before it is read, where it is known.
            held.reserve(length or 0)
            if expecting:
                await raw.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                body = await self._read_body(raw, held)
            except RequestPayloadError as err:
                self.hooks.refused_request(400)
                return refuse(400, f"malformed request body: {err}"), True
            target = raw.raw_path
            path, _, query = target.partition("?")
            request = Request(raw.method, path, query, headers, body, held.try_reserve)
            return await self.hooks.handle(request), False
        except _RefusedError as refusal:
            self.hooks.refused_request(refusal.response.status)
            return refusal.response, refusal.close
        finally:
            held.release()

    async def _read_body(self, raw: web.BaseRequest, held: _Held) -> bytes:
        """The body; _RefusedError past the limit or the budget (chunked bodies have no length up
        front, so they reserve as they arrive)."""
        if not raw.body_exists:
            return b""
        chunks: list[bytes] = []
        total = 0
        limit = self.limits.max_body_bytes
        while chunk := await raw.content.readany():
            total += len(chunk)
            if total > limit:
                message = f"request body exceeds the limit of {limit} bytes (--max-body-bytes)"
                raise _RefusedError(self.hooks.refuse(413, message))
            held.reserve(total - held.bytes)
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def busy_with_bodies(self) -> Response:
        limit = self.limits.max_body_bytes_in_flight
        busy = self.hooks.refuse(
            503,
            f"request bodies under way hold the server's budget of {limit} bytes "
            "(--max-body-bytes-in-flight); retry shortly",
        )
        return Response(busy.status, busy.body, busy.content_type, (("Retry-After", "1"),))

    async def shutdown(self, timeout: float) -> bool:
        """Stop accepting, let requests under way finish, close connections.

        Returns False when some requests were still running at the deadline (then cut off).
        """
        if self._listener is not None:
            self._listener.close()
        # Busy connections close after their answer (draining sets `Connection: close`); a
        # connection is closed only while it waits with nothing received, so no request that
        # has begun to arrive is lost.
        self.draining = True
        deadline = self.loop.time() + timeout
        while True:
            busy = 0
            for connection in self._http.connections:
                if isinstance(connection, _Connection) and connection.idle:
                    connection.force_close()
                else:
                    busy += 1
            if (not busy and not self.in_flight) or self.loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        drained = self.in_flight == 0
        await self._http.shutdown(0.5)
        return drained
