"""Open Inference tensors to numpy and back, and manifest parsing: pure code, table-driven."""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import numpy as np
import pytest

from fogline.workloads.manifest import ArtifactError, TensorSpec, parse_manifest
from fogline.workloads.server.errors import InvalidInputError
from fogline.workloads.server.tensors import (
    check_shape,
    decode_binary_data,
    decode_json_data,
    encode_binary,
    encode_json,
)

pytestmark = pytest.mark.unit

SPEC = TensorSpec("input", "FP32", (-1, 3))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([2], "does not match the model's \\[-1, 3\\]"),
        ([2, 4], "does not match the model's \\[-1, 3\\]"),
        ([2, -1], "non-negative integers"),
        ("2x3", "non-negative integers"),
        ([True, 3], "non-negative integers"),
    ],
)
def test_shape_that_does_not_fit_the_signature_is_refused(shape: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        check_shape(SPEC, shape)


@pytest.mark.parametrize(
    "data", [[1, 2, 3, 4, 5, 6], [[1, 2, 3], [4, 5, 6]]], ids=["flat", "nested"]
)
def test_json_data_flat_or_nested_becomes_the_declared_shape(data: list[Any]) -> None:
    array = decode_json_data(SPEC, (2, 3), data)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2, 3], "has 3 elements but shape \\[2, 3\\] needs 6"),
        (["1", "2", "3", "4", "5", "6"], "JSON numbers"),
        ([[1, 2, 3], [4, 5]], "not a rectangular array"),
        ({"a": 1}, "must be a JSON array"),
    ],
)
def test_json_data_that_does_not_fit_is_refused(data: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        decode_json_data(SPEC, (2, 3), data)


def test_binary_data_round_trips_and_checks_its_size() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    header, raw = encode_binary("input", "FP32", array)
    assert header["parameters"] == {"binary_data_size": 24}
    np.testing.assert_array_equal(decode_binary_data(SPEC, (2, 3), memoryview(raw)), array)
    with pytest.raises(InvalidInputError, match="binary_data_size 20"):
        decode_binary_data(SPEC, (2, 3), memoryview(raw[:20]))


def test_bytes_tensors_use_length_prefixes() -> None:
    spec = TensorSpec("text", "BYTES", (-1,))
    raw = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"cde"))
    array = decode_binary_data(spec, (2,), memoryview(raw))
    assert array.tolist() == [b"ab", b"cde"]
    assert encode_binary("text", "BYTES", array)[1] == raw
    assert encode_json("text", "BYTES", array)["data"] == ["ab", "cde"]


def manifest(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "formatVersion": 1,
        "name": "digits",
        "files": {"model.onnx": {"sha256": "a" * 64, "sizeBytes": 10}},
        "serving": {
            "file": "model.onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        },
    }
    document.update(changes)
    return document


def test_manifest_digest_is_the_sha256_of_its_canonical_form() -> None:
    document = manifest()
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert parse_manifest(document).digest == "sha256:" + hashlib.sha256(canonical).hexdigest()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"files": {"model.onnx": {"sha256": "b" * 64, "sizeBytes": 10}}}, id="file"),
        pytest.param({"files": {"model.onnx": {"sha256": "a" * 64, "sizeBytes": 11}}}, id="size"),
        pytest.param(
            {
                "files": {
                    "model.onnx": {"sha256": "a" * 64, "sizeBytes": 10},
                    "model.onnx.data": {"sha256": "c" * 64, "sizeBytes": 5},
                }
            },
            id="added-external-data",
        ),
        pytest.param({"name": "other"}, id="name"),
    ],
)
def test_any_change_to_the_manifest_changes_the_artifact_digest(change: dict[str, Any]) -> None:
    assert parse_manifest(manifest(**change)).digest != parse_manifest(manifest()).digest


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"formatVersion": 2}, "manifest.formatVersion"),
        ({"files": {"../x": {"sha256": "a" * 64, "sizeBytes": 1}}}, "relative path inside"),
        (
            {"files": {"model.onnx": {"sha256": "xyz", "sizeBytes": 1}}},
            "files\\['model.onnx'\\].sha256",
        ),
        ({"serving": {"file": "other.onnx", "inputs": [], "outputs": []}}, "manifest.serving.file"),
    ],
)
def test_manifest_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ArtifactError, match=field):
        parse_manifest(manifest(**changes))


@pytest.mark.parametrize(
    ("spec", "data", "message"),
    [
        (SPEC, [1.0, None, 3.0, 4.0, 5.0, 6.0], "JSON numbers only"),
        (SPEC, [1.0, "2", 3.0, 4.0, 5.0, 6.0], "JSON numbers only"),
        (SPEC, [1, 2, 3, 4, 5, 2**70], "JSON numbers only"),
        (TensorSpec("ids", "INT8", (-1, 3)), [1, 2, 3, 4, 5, 300], "within -128..127"),
        (TensorSpec("ids", "INT64", (-1, 3)), [1.5, 2, 3, 4, 5, 6], "JSON numbers only"),
        (TensorSpec("mask", "BOOL", (-1, 3)), [1, 0, 1, 0, 1, 0], "true/false only"),
    ],
    ids=["null", "string-late", "int-past-64-bits", "int8-range", "float-for-int", "int-for-bool"],
)
def test_json_data_that_is_not_of_the_datatype_is_refused_wherever_it_sits(
    spec: TensorSpec, data: list[Any], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        decode_json_data(spec, (2, 3), data)


def test_non_finite_outputs_are_written_as_strings_numpy_reads_back() -> None:
    array = np.array([[1.5, np.nan], [np.inf, -np.inf]], dtype=np.float32)
    data = encode_json("logits", "FP32", array)["data"]
    assert data == [1.5, "NaN", "Infinity", "-Infinity"]
    back = np.array(data, dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(back, array)


def test_finite_outputs_stay_a_numpy_array_for_orjson() -> None:
    import orjson

    array = np.array([[0.1, 2.0]], dtype=np.float32)
    document = encode_json("logits", "FP32", array)
    text = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    assert b'"data":[0.1,2.0]' in text
