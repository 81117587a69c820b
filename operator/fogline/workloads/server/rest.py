"""The REST endpoints of the Open Inference Protocol v2 and /metrics: route a Request to the
data plane, and map domain errors to HTTP statuses (the one place that does). Holds no model
logic and no socket handling."""

from __future__ import annotations

import hmac
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import orjson

from fogline.workloads.server.dataplane import DataPlane
from fogline.workloads.server.errors import (
    InferenceError,
    InferenceFailedError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from fogline.workloads.server.metrics import CONTENT_TYPE, ServerMetrics, method_label
from fogline.workloads.server.wire import Request, Response

STATUS_BY_ERROR: dict[type[InferenceError], int] = {
    InvalidInputError: 400,
    UnauthorizedError: 401,
    ModelNotFoundError: 404,
    PayloadTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    InferenceFailedError: 500,
    ModelNotReadyError: 503,
    OverloadedError: 503,
}
# Endpoints a probe or a scraper reads: open even when a bearer token guards the rest.
OPEN_ENDPOINTS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
RETRY_AFTER = (("Retry-After", "1"),)
INFER_HEADER = "inference-header-content-length"
# zlib window bits: gzip framing, and the zlib framing HTTP calls "deflate".
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

Endpoint = Callable[[Request, list[str]], Awaitable[Response]]


def json_response(status: int, document: Any) -> Response:
    return Response(status, orjson.dumps(document))


def error_response(status: int, message: str) -> Response:
    """The JSON error every refusal carries; a 503 also says when to come back."""
    response = json_response(status, {"error": message})
    if status == 503:
        return Response(503, response.body, headers=RETRY_AFTER)
    return response


def status_for(error: InferenceError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[kind]
    return 500


class RestApi:
    def __init__(
        self,
        dataplane: DataPlane,
        metrics: ServerMetrics,
        max_body_bytes: int,
        token: str | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self._token = token.encode() if token else None

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        parts = request.path.split("/")[1:]
        template, endpoint, methods = self._route(parts)
        if endpoint is None:
            response = error_response(404, f"no endpoint at {request.path[:200]}")
        elif request.method not in methods:
            allowed = ", ".join(methods)
            response = error_response(
                405, f"{request.method} is not allowed on {template}; use {allowed}"
            )
            response = Response(405, response.body, headers=(("Allow", allowed),))
        else:
            try:
                if self._token is not None and template not in OPEN_ENDPOINTS:
                    self._authorize(request)
                response = await endpoint(request, parts)
            except UnauthorizedError as err:
                response = error_response(401, str(err))
                response = Response(401, response.body, headers=(("WWW-Authenticate", "Bearer"),))
            except InferenceError as err:
                response = error_response(status_for(err), str(err))
        metrics = self.metrics
        metrics.requests.labels(template, method_label(request.method), str(response.status)).inc()
        metrics.request_seconds.labels(template).observe(time.perf_counter() - started)
        return response

    def _authorize(self, request: Request) -> None:
        assert self._token is not None
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            raise UnauthorizedError("this endpoint needs an `Authorization: Bearer` token")
        if not hmac.compare_digest(credentials.strip().encode(), self._token):
            raise UnauthorizedError("the bearer token is not the server's")

    def _route(self, parts: list[str]) -> tuple[str, Endpoint | None, tuple[str, ...]]:
        """The endpoint template (a bounded metrics label), its function and allowed methods."""
        count = len(parts)
        if count == 1 and parts[0] == "metrics":
            return "/metrics", self._metrics, ("GET",)
        if not parts or parts[0] != "v2":
            return "other", None, ()
        if count == 1 or (count == 2 and parts[1] == ""):
            return "/v2", self._server_metadata, ("GET",)
        if count == 3 and parts[1] == "health" and parts[2] in ("live", "ready"):
            return f"/v2/health/{parts[2]}", self._health, ("GET",)
        if count >= 3 and parts[1] == "models" and parts[2]:
            rest = parts[3:]
            versioned = len(rest) >= 2 and rest[0] == "versions"
            if versioned:
                rest = rest[2:]
            prefix = "/v2/models/{name}" + ("/versions/{version}" if versioned else "")
            if not rest:
                return prefix, self._model_metadata, ("GET",)
            if rest == ["ready"]:
                return prefix + "/ready", self._model_ready, ("GET",)
            if rest == ["infer"]:
                return prefix + "/infer", self._infer, ("POST",)
        return "other", None, ()

    @staticmethod
    def _model_address(parts: list[str]) -> tuple[str, str | None]:
        version = unquote(parts[4]) if len(parts) >= 5 and parts[3] == "versions" else None
        return unquote(parts[2]), version

    async def _metrics(self, request: Request, parts: list[str]) -> Response:
        return Response(200, self.metrics.render(), content_type=CONTENT_TYPE)

    async def _server_metadata(self, request: Request, parts: list[str]) -> Response:
        return json_response(200, self.dataplane.server_metadata())

    async def _health(self, request: Request, parts: list[str]) -> Response:
        if parts[2] == "live":
            return json_response(200, {"live": True})
        ready = self.dataplane.ready()
        return json_response(200 if ready else 503, {"ready": ready})

    async def _model_metadata(self, request: Request, parts: list[str]) -> Response:
        name, version = self._model_address(parts)
        return json_response(200, self.dataplane.model_metadata(name, version))

    async def _model_ready(self, request: Request, parts: list[str]) -> Response:
        name, version = self._model_address(parts)
        ready = self.dataplane.model_ready(name, version)
        return json_response(200 if ready else 503, {"name": name, "ready": ready})

    async def _infer(self, request: Request, parts: list[str]) -> Response:
        name, version = self._model_address(parts)
        header_length: int | None = None
        raw_length = request.headers.get(INFER_HEADER)
        if raw_length is not None:
            # ASCII digits only: str.isdigit() takes "²" and int() takes "١٢", " 12" and "1_2".
            if not (raw_length.isascii() and raw_length.isdigit()) or len(raw_length) > 18:
                raise InvalidInputError(
                    f"Inference-Header-Content-Length {raw_length[:40]!r} is not a byte count"
                )
            header_length = int(raw_length)
        body = request.body
        if request.headers.get("content-encoding", "identity").lower() != "identity":
            # A small compressed body may inflate to the limit: always off the loop.
            body = await self.dataplane.offload(
                self.max_body_bytes, lambda: self._decoded_body(request)
            )
            # At most one inflated body per codec thread exists before it is counted here.
            if not request.hold(len(body)):
                raise OverloadedError(
                    f"the inflated body of {len(body)} bytes does not fit beside the request "
                    "bodies under way (--max-body-bytes-in-flight); retry shortly"
                )
        result = await self.dataplane.infer(name, version, body, header_length)
        if result.header_length is None:
            return Response(200, result.body)
        return Response(
            200,
            result.body,
            content_type="application/octet-stream",
            headers=(("Inference-Header-Content-Length", str(result.header_length)),),
        )

    def _decoded_body(self, request: Request) -> bytes:
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding == "identity":
            return request.body
        wbits = _WBITS.get(encoding)
        if wbits is None:
            raise UnsupportedMediaTypeError(
                f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none"
            )
        inflater = zlib.decompressobj(wbits)
        try:
            body = inflater.decompress(request.body, self.max_body_bytes)
        except zlib.error as err:
            raise InvalidInputError(f"request body is not valid {encoding}: {err}") from None
        if inflater.unconsumed_tail:
            raise PayloadTooLargeError(
                f"decompressed request body exceeds the limit of {self.max_body_bytes} bytes"
            )
        return body
