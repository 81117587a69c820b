"""The wire's own additions to aiohttp that no socket test reaches cheaply: the accept loop at
the descriptor limit, and the bytes of a refusal sent before any request exists."""

from __future__ import annotations

import asyncio
import errno
import logging
from pathlib import Path

import pytest

from fogline.workloads.server.rest import error_response
from fogline.workloads.server.wire import HttpServer, Response, WireHooks, WireLimits, raw_response

pytestmark = pytest.mark.unit


async def _unused(request: object) -> Response:
    raise AssertionError("no request is handled here")


def test_failed_accepts_at_the_descriptor_limit_log_once_not_per_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reasons: list[str] = []

    async def run() -> None:
        hooks = WireHooks(handle=_unused, refuse=error_response, connection_refused=reasons.append)
        server = HttpServer(hooks, WireLimits())
        loop = asyncio.get_running_loop()
        error = OSError(errno.EMFILE, "Too many open files")
        for _ in range(500):  # asyncio reports each failed accept, one a second
            server._loop_exception(
                loop, {"message": "socket.accept() out of system resource", "exception": error}
            )

    with caplog.at_level(logging.DEBUG):
        asyncio.run(run())
    warnings = [record for record in caplog.records if "file descriptors" in record.getMessage()]
    assert len(warnings) == 1
    assert not any(record.exc_info for record in caplog.records)
    assert reasons == ["fd_limit"] * 500


def test_other_loop_errors_still_reach_the_default_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> None:
        server = HttpServer(WireHooks(handle=_unused, refuse=error_response), WireLimits())
        server._loop_exception(asyncio.get_running_loop(), {"message": "something else broke"})

    with caplog.at_level(logging.ERROR):
        asyncio.run(run())
    assert any("something else broke" in record.getMessage() for record in caplog.records)


def test_a_refusal_without_a_request_is_a_whole_response_that_closes() -> None:
    data = raw_response(error_response(503, "busy"))
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"Connection: close" in lines
    assert b"Retry-After: 1" in lines
    assert f"Content-Length: {len(body)}".encode() in lines
    assert body == b'{"error":"busy"}'


def test_an_accept_retry_that_meets_the_closed_listener_is_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> None:
        server = HttpServer(WireHooks(handle=_unused, refuse=error_response), WireLimits())
        await server.start("127.0.0.1", 0)
        await server.shutdown(0)
        server._loop_exception(
            asyncio.get_running_loop(),
            {
                "message": "Exception in callback",
                "exception": ValueError("Invalid file descriptor: -1"),
            },
        )

    with caplog.at_level(logging.WARNING):
        asyncio.run(run())
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_a_body_budget_below_the_body_limit_is_refused_naming_both_flags() -> None:
    with pytest.raises(ValueError, match="--max-body-bytes-in-flight 1000 is below --max-body"):
        WireLimits(max_body_bytes=2000, max_body_bytes_in_flight=1000)


def test_the_default_body_budget_grows_to_a_larger_body_limit(tmp_path: Path) -> None:
    from fogline.workloads.server.cli import _config, build_parser

    big = 2 * WireLimits.max_body_bytes_in_flight
    args = build_parser().parse_args(
        ["--model-dir", str(tmp_path), "--name", "m", "--max-body-bytes", str(big)]
    )
    assert _config(args).limits.max_body_bytes_in_flight == big
    args = build_parser().parse_args(["--model-dir", str(tmp_path), "--name", "m"])
    assert _config(args).limits.max_body_bytes_in_flight == WireLimits.max_body_bytes_in_flight
