"""A loopback HTTP store of the tests' own that misbehaves on request: it serves an artifact
folder with Range support and ETags, and can drop a connection midway, stall, drip, send more
than it announced, answer 503 with Retry-After, or send a garbage status line. It counts the
body bytes it sends per file and records each request's headers."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Misbehaviour:
    """What the store does to requests for `path` (a file name in the folder)."""

    path: str
    cut_at: int | None = None  # drop the connection after this many body bytes (once)
    stall_seconds: float = 0.0  # stop sending midway for this long (once)
    drip_delay: float = 0.0  # seconds between single bytes (every time)
    extra_bytes: int = 0  # send this much more than the file, with no Content-Length
    unavailable: int = 0  # answer 503 with Retry-After this many times first
    garbage: int = 0  # answer a malformed status line this many times first
    done: set[str] = field(default_factory=set)


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up on a misbehaving answer is the point, not an error."""


class FlakyStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.misbehaviours: dict[str, Misbehaviour] = {}
        self.bytes_sent: dict[str, int] = defaultdict(int)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                store.handle(self)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def requests_for(self, name: str) -> list[dict[str, str]]:
        return [headers for path, headers in self.requests if path == name]

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        name = urlsplit(request.path).path.lstrip("/")  # absolute form when reached as a proxy
        with self.lock:
            self.requests.append((name, {k.lower(): v for k, v in request.headers.items()}))
        bad = self.misbehaviours.get(name)
        path = self.root / name
        if not path.is_file():
            request.send_error(404)
            return
        if bad and bad.garbage > 0:
            bad.garbage -= 1
            request.wfile.write(b"HTTP/1.1 TWO HUNDRED\r\n\r\n")
            request.close_connection = True
            return
        if bad and bad.unavailable > 0:
            bad.unavailable -= 1
            request.send_response(503)
            request.send_header("Retry-After", "1")
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        data = path.read_bytes()
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        start = 0
        wanted = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if wanted and (if_range is None or if_range == etag):
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            request.send_response(206)
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            request.send_response(200)
        body = data[start:]
        if bad and bad.extra_bytes:
            body += b"\0" * bad.extra_bytes
            request.close_connection = True  # no Content-Length: the body ends with the link
        else:
            request.send_header("Content-Length", str(len(body)))
        request.send_header("ETag", etag)
        request.end_headers()
        self._send(request, name, body, start, bad)

    def _send(
        self,
        request: http.server.BaseHTTPRequestHandler,
        name: str,
        body: bytes,
        start: int,
        bad: Misbehaviour | None,
    ) -> None:
        try:
            if bad and bad.drip_delay:
                for index in range(len(body)):
                    request.wfile.write(body[index : index + 1])
                    request.wfile.flush()
                    self._count(name, 1)
                    time.sleep(bad.drip_delay)
                return
            position = start
            for offset in range(0, len(body), 1 << 16):
                chunk = body[offset : offset + (1 << 16)]
                cutting = bad and bad.cut_at is not None and "cut" not in bad.done
                if (
                    cutting
                    and bad
                    and bad.cut_at is not None
                    and position + len(chunk) >= bad.cut_at
                ):
                    keep = bad.cut_at - position
                    request.wfile.write(chunk[:keep])
                    self._count(name, keep)
                    bad.done.add("cut")
                    request.close_connection = True
                    request.wfile.flush()
                    request.connection.shutdown(2)
                    return
                if bad and bad.stall_seconds and "stall" not in bad.done and offset > 0:
                    bad.done.add("stall")
                    time.sleep(bad.stall_seconds)
                    request.close_connection = True
                    return
                request.wfile.write(chunk)
                self._count(name, len(chunk))
                position += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            request.close_connection = True

    def _count(self, name: str, amount: int) -> None:
        with self.lock:
            self.bytes_sent[name] += amount
