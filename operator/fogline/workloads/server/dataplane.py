"""The data plane: finds the model a request names, decodes Open Inference requests into numpy
feeds, runs them through the batching runner and encodes the response. Raises domain errors
(errors.py); never chooses HTTP status codes or touches sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson

from fogline import __version__
from fogline.workloads.server.batching import InferenceRunner
from fogline.workloads.server.errors import (
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
)
from fogline.workloads.server.model import OnnxModel
from fogline.workloads.server.tensors import (
    check_shape,
    decode_binary_data,
    decode_json_data,
    encode_binary,
    encode_json,
)

SERVER_NAME = "fogline"
# Bodies and outputs past this size are decoded and encoded on the codec threads, so that a
# large request never holds up the event loop that answers health probes; below it the thread
# hop would cost more than the work (a batch-1 request decodes in a few microseconds).
OFFLOAD_BYTES = 256 * 1024
_T = TypeVar("_T")
EXTENSIONS = ("binary_tensor_data",)


@dataclass(frozen=True)
class InferResponse:
    body: bytes
    # Length of the JSON header when binary tensors follow it (binary tensor extension).
    header_length: int | None = None


class DataPlane:
    def __init__(self, model: OnnxModel, codec: Executor | None = None) -> None:
        self.model = model
        self.codec = codec
        self.runner: InferenceRunner | None = None
        self.draining = False

    async def offload(self, size: int, work: Callable[[], _T]) -> _T:
        """Run `work` on a codec thread when `size` bytes make it heavy, else right here."""
        if self.codec is None or size < OFFLOAD_BYTES:
            return work()
        return await asyncio.get_running_loop().run_in_executor(self.codec, work)

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def ready(self) -> bool:
        return self.model.ready and self.runner is not None and not self.draining

    def get_model(self, name: str, version: str | None = None) -> OnnxModel:
        if name != self.model.name:
            raise ModelNotFoundError(name)
        if version is not None and version != self.model.version:
            raise ModelNotFoundError(name, version)
        return self.model

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = self.get_model(name, version)
        if not model.ready:
            raise ModelNotReadyError(name)
        return model.metadata()

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.get_model(name, version).ready and self.ready()

    async def infer(
        self, name: str, version: str | None, body: bytes, header_length: int | None
    ) -> InferResponse:
        model = self.get_model(name, version)
        # Draining is not a refusal: readiness turned 503 so traffic moves away, and what
        # still arrives meanwhile is served.
        if not model.ready or self.runner is None:
            raise ModelNotReadyError(name)

        def decode() -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]], _Selection]:
            request, binary = _split_body(body, header_length)
            return (
                request,
                _decode_inputs(model, request, binary),
                _requested_outputs(model, request),
            )

        request, feeds, (selected, default_binary) = await self.offload(len(body), decode)
        outputs = await self.runner.submit(feeds)
        size = sum(output.nbytes for output in outputs)
        return await self.offload(
            size, lambda: _encode_response(model, request, outputs, selected, default_binary)
        )


_Selection = tuple[list[tuple[int, bool | None]], bool]


def _split_body(body: bytes, header_length: int | None) -> tuple[dict[str, Any], memoryview]:
    if header_length is not None and not 0 < header_length <= len(body):
        raise InvalidInputError(
            f"Inference-Header-Content-Length {header_length} is outside the body of "
            f"{len(body)} bytes"
        )
    view = memoryview(body)
    head = view[:header_length] if header_length is not None else view
    try:
        request = orjson.loads(head)
    except orjson.JSONDecodeError as err:  # also past orjson's nesting limit of 1024
        raise InvalidInputError(f"request body is not valid JSON: {err}") from None
    if not isinstance(request, dict):
        raise InvalidInputError("request body must be a JSON object with an 'inputs' list")
    return request, view[header_length:] if header_length is not None else view[:0]


def _decode_inputs(
    model: OnnxModel, request: dict[str, Any], binary: memoryview
) -> dict[str, np.ndarray[Any, Any]]:
    items = request.get("inputs")
    if not isinstance(items, list) or not items:
        raise InvalidInputError("'inputs' must be a non-empty list of tensors")
    specs = {spec.name: spec for spec in model.inputs}
    feeds: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInputError("each input must be an object with a 'name'")
        name = item["name"]
        spec = specs.get(name)
        if spec is None:
            raise InvalidInputError(
                f"input {name!r} is not an input of model {model.name!r}; it takes {sorted(specs)}"
            )
        if name in feeds:
            raise InvalidInputError(f"input {name!r} appears more than once")
        if item.get("datatype") != spec.datatype:
            raise InvalidInputError(
                f"input {name!r}: datatype {item.get('datatype')!r} but the model takes "
                f"{spec.datatype}"
            )
        shape = check_shape(spec, item.get("shape"))
        parameters = item.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInputError(
                    f"input {name!r}: binary_data_size {size!r} overruns the {len(binary)} "
                    "bytes after the JSON header"
                )
            feeds[name] = decode_binary_data(spec, shape, binary[offset : offset + size])
            offset += size
        elif "data" in item:
            feeds[name] = decode_json_data(spec, shape, item["data"])
        else:
            raise InvalidInputError(f"input {name!r}: has neither 'data' nor binary_data_size")
    missing = sorted(set(specs) - set(feeds))
    if missing:
        raise InvalidInputError(f"model {model.name!r} needs inputs {missing}")
    if offset != len(binary):
        raise InvalidInputError(f"{len(binary) - offset} bytes of binary data belong to no input")
    if model.batchable:
        rows = {array.shape[0] for array in feeds.values()}
        if len(rows) > 1:
            raise InvalidInputError(f"inputs disagree on the batch size: {sorted(rows)}")
    return feeds


def _requested_outputs(
    model: OnnxModel, request: dict[str, Any]
) -> tuple[list[tuple[int, bool | None]], bool]:
    """Indices of the outputs to return, each with its binary choice (None: the default)."""
    parameters = request.get("parameters") or {}
    default_binary = bool(isinstance(parameters, dict) and parameters.get("binary_data_output"))
    wanted = request.get("outputs")
    if wanted is None:
        return [(index, None) for index in range(len(model.output_names))], default_binary
    if not isinstance(wanted, list):
        raise InvalidInputError("'outputs' must be a list of {name, parameters} objects")
    selected: list[tuple[int, bool | None]] = []
    for item in wanted:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in model.output_names:
            raise InvalidInputError(
                f"output {name!r} is not an output of model {model.name!r}; "
                f"it has {list(model.output_names)}"
            )
        params = item.get("parameters") or {}
        binary = params.get("binary_data") if isinstance(params, dict) else None
        selected.append((model.output_names.index(name), None if binary is None else bool(binary)))
    return selected, default_binary


def _encode_response(
    model: OnnxModel,
    request: dict[str, Any],
    outputs: list[np.ndarray[Any, Any]],
    selected: list[tuple[int, bool | None]],
    default_binary: bool,
) -> InferResponse:
    response: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if "id" in request:
        response["id"] = request["id"]
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for index, binary in selected:
        spec = model.outputs[index]
        if default_binary if binary is None else binary:
            header, raw = encode_binary(spec.name, spec.datatype, outputs[index])
            tensors.append(header)
            blobs.append(raw)
        else:
            tensors.append(encode_json(spec.name, spec.datatype, outputs[index]))
    response["outputs"] = tensors
    head = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return InferResponse(head)
    return InferResponse(b"".join([head, *blobs]), len(head))
