"""Open Inference Protocol tensors to and from numpy: JSON `data` and the binary tensor
extension. Pure conversions; checking a tensor against the model's signature lives here too."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from fogline.workloads.manifest import TensorSpec
from fogline.workloads.server.errors import InvalidInputError

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_LENGTH_PREFIX = struct.Struct("<I")
# Which inferred numpy kinds each target kind takes from JSON data: numbers for numbers,
# true/false for BOOL; bool for numbers is refused too (numpy would read true as 1).
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf", "O": ""}
# JSON has no NaN or Infinity: such output values are written as these strings, the proto3 JSON
# mapping's spelling, which numpy (and so tritonclient's as_numpy) reads back as floats.
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def check_shape(spec: TensorSpec, shape: Any) -> tuple[int, ...]:
    """The request's shape as a tuple, or InvalidInputError naming how it differs."""
    if not isinstance(shape, list) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape
    ):
        raise InvalidInputError(
            f"input {spec.name!r}: shape must be a list of non-negative integers"
        )
    if len(shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
    ):
        raise InvalidInputError(
            f"input {spec.name!r}: shape {shape} does not match the model's {list(spec.shape)}"
        )
    return tuple(shape)


def _element_count(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def decode_json_data(spec: TensorSpec, shape: tuple[int, ...], data: Any) -> np.ndarray[Any, Any]:
    """A tensor from the JSON `data` field (flat row-major or nested lists)."""
    if not isinstance(data, list):
        raise InvalidInputError(f"input {spec.name!r}: data must be a JSON array")
    count = _element_count(shape)
    if spec.datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count or not all(isinstance(item, str) for item in flat):
            raise InvalidInputError(
                f"input {spec.name!r}: BYTES data must hold {count} strings for shape {list(shape)}"
            )
        return np.array([item.encode() for item in flat], dtype=np.object_).reshape(shape)
    try:
        # Let numpy read the values as they are first: a number becomes a bool, int or float
        # array; null, a string or an integer past 64 bits makes an object or text array,
        # which the protocol refuses (a cast would turn null into NaN and "1.5" into 1.5).
        inferred = np.asarray(data)
    except (ValueError, TypeError) as err:
        raise InvalidInputError(
            f"input {spec.name!r}: data is not a rectangular array of {spec.datatype} values: "
            f"{str(err)[:200]}"
        ) from None
    dtype = NUMPY_DTYPES[spec.datatype]
    if inferred.size and inferred.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        what = "true/false" if dtype.kind == "b" else "JSON numbers"
        raise InvalidInputError(
            f"input {spec.name!r}: {spec.datatype} data must hold {what} only "
            "(null, strings and integers beyond 64 bits are refused)"
        )
    if dtype.kind in "iu" and inferred.size:
        info = np.iinfo(dtype)
        if inferred.min() < info.min or inferred.max() > info.max:
            raise InvalidInputError(
                f"input {spec.name!r}: {spec.datatype} data must lie within {info.min}..{info.max}"
            )
    array = inferred.astype(dtype, copy=False)
    if array.size != count:
        raise InvalidInputError(
            f"input {spec.name!r}: data has {array.size} elements but shape {list(shape)} "
            f"needs {count}"
        )
    return array.reshape(shape)


def decode_binary_data(
    spec: TensorSpec, shape: tuple[int, ...], raw: memoryview
) -> np.ndarray[Any, Any]:
    """A tensor from its slice of the body under the binary tensor extension."""
    count = _element_count(shape)
    if spec.datatype == "BYTES":
        items: list[bytes] = []
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise InvalidInputError(f"input {spec.name!r}: truncated BYTES length prefix")
            (length,) = _LENGTH_PREFIX.unpack_from(raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise InvalidInputError(f"input {spec.name!r}: BYTES element overruns its data")
            items.append(bytes(raw[offset : offset + length]))
            offset += length
        if len(items) != count:
            raise InvalidInputError(
                f"input {spec.name!r}: {len(items)} BYTES elements but shape {list(shape)} "
                f"needs {count}"
            )
        return np.array(items, dtype=np.object_).reshape(shape)
    dtype = NUMPY_DTYPES[spec.datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInputError(
            f"input {spec.name!r}: binary_data_size {len(raw)} does not match shape "
            f"{list(shape)} of {spec.datatype} ({count * dtype.itemsize} bytes)"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def encode_json(name: str, datatype: str, array: np.ndarray[Any, Any]) -> dict[str, Any]:
    """The output as a JSON tensor. Numbers stay a flat numpy array, which the data plane's
    orjson writes without a Python object per element; NaN and infinities become strings."""
    data: Any
    if datatype == "BYTES":
        data = [
            item.decode("utf-8", "replace") if isinstance(item, bytes) else item
            for item in array.ravel().tolist()
        ]
    elif array.dtype.kind == "f" and not np.isfinite(array).all():
        data = [
            value if math.isfinite(value) else NON_FINITE[str(value)]
            for value in array.ravel().tolist()
        ]
    else:
        data = np.ascontiguousarray(array.ravel())
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def encode_binary(
    name: str, datatype: str, array: np.ndarray[Any, Any]
) -> tuple[dict[str, Any], bytes]:
    """The output's JSON header and its bytes for the binary tensor extension."""
    if datatype == "BYTES":
        parts = []
        for item in array.ravel().tolist():
            value = item if isinstance(item, bytes) else str(item).encode()
            parts += [_LENGTH_PREFIX.pack(len(value)), value]
        raw = b"".join(parts)
    else:
        raw = np.ascontiguousarray(array).tobytes()
    header = {
        "name": name,
        "datatype": datatype,
        "shape": list(array.shape),
        "parameters": {"binary_data_size": len(raw)},
    }
    return header, raw
