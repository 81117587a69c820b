"""Artifacts built to be stopped by a rollout's analysis, for the dev cluster's demo and the
tests: each has the digits models' signature (64 features in as `input`, 10 logits out as
`logits`) and loads, warms up and becomes Ready like any other, and each is bad for the site
in a way only its live metrics show. A wide CNN answers correctly and many times more slowly
than the digits MLP; a lookup model answers every real request with a 500.

Written as the trainer writes artifacts (fogline.workloads.manifest: every file listed with
its sha256 and size, the digest the sha256 of the canonical manifest), with onnx's helper
rather than torch: building them takes milliseconds, no training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fogline.workloads.manifest import manifest_digest

FEATURES, CLASSES = 64, 10


def write_onnx_artifact(
    folder: Path,
    model: onnx.ModelProto,
    name: str = "digits",
    features: int = FEATURES,
    classes: int = CLASSES,
    accuracy: float | None = None,
) -> str:
    """Write `model` as model.onnx with its manifest.json (input `input` [-1, features],
    output `logits` [-1, classes]); returns the artifact digest. `accuracy`, when measured,
    goes into the manifest's metrics and evaluation as the trainer writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / "model.onnx"
    model_path.write_bytes(model.SerializeToString())
    data = model_path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    manifest: dict[str, Any] = {
        "formatVersion": 1,
        "name": name,
        "createdAt": "2026-11-01T00:00:00Z",
        "files": {"model.onnx": {"sha256": sha, "sizeBytes": len(data)}},
        "serving": {
            "file": "model.onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, features]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, classes]}],
        },
        "quantized": False,
        "versions": {"onnx": onnx.__version__},
    }
    if accuracy is not None:
        manifest["metrics"] = {"accuracy": accuracy}
        manifest["evaluation"] = {"metric": "accuracy", "value": accuracy}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest_digest(manifest)


def _finished(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _signature(features: int, classes: int) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    return (
        helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features]),
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
    )


def wide_cnn_onnx(
    channels: int = 192, layers: int = 5, upscale: int = 4, seed: int = 0
) -> onnx.ModelProto:
    """A bigger network for the same 8x8 digits: the 64 features as one 8x8 image, scaled up
    `upscale` times (nearest), `layers` 3x3 convolutions of `channels` channels (padded),
    global average pooling and a linear layer to 10 logits. About (8 * upscale)^2 * 9 *
    channels^2 multiply-adds per layer and row (340M at the defaults; the test MLP: 2.4K in
    all), so it answers correctly and much more slowly, from a file of 5 MB."""
    rng = np.random.default_rng(seed)
    scales = np.array([1, 1, upscale, upscale], dtype=np.float32)
    initializers = [
        numpy_helper.from_array(np.array([-1, 1, 8, 8], dtype=np.int64), "image"),
        numpy_helper.from_array(scales, "scales"),
    ]
    nodes = [
        helper.make_node("Reshape", ["input", "image"], ["small"]),
        helper.make_node("Resize", ["small", "", "scales"], ["x0"], mode="nearest"),
    ]
    inputs = 1
    for index in range(layers):
        fan_in = inputs * 9
        weight = (rng.standard_normal((channels, inputs, 3, 3)) / np.sqrt(fan_in)).astype(
            np.float32
        )
        initializers += [
            numpy_helper.from_array(weight, f"conv{index}.w"),
            numpy_helper.from_array(np.zeros(channels, dtype=np.float32), f"conv{index}.b"),
        ]
        nodes += [
            helper.make_node(
                "Conv",
                [f"x{index}", f"conv{index}.w", f"conv{index}.b"],
                [f"c{index}"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
            ),
            helper.make_node("Relu", [f"c{index}"], [f"x{index + 1}"]),
        ]
        inputs = channels
    head = (rng.standard_normal((channels, 10)) / np.sqrt(channels)).astype(np.float32)
    initializers += [
        numpy_helper.from_array(head, "head.w"),
        numpy_helper.from_array(np.zeros(10, dtype=np.float32), "head.b"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [f"x{layers}"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "head.w", "head.b"], ["logits"]),
    ]
    features, logits = _signature(FEATURES, CLASSES)
    return _finished(helper.make_graph(nodes, "wide_cnn", [features], [logits], initializers))


def failing_onnx(seed: int = 0) -> onnx.ModelProto:
    """A linear layer plus a per-row bias looked up in a table by the row's largest value, a
    table exported with one entry: the server's warm-up run on zeros looks up entry 0 and
    passes, so the model loads and becomes Ready, while every real digits row (values up to
    16) indexes past the table and onnxruntime fails the run: the request gets a 500. The
    kind of bug a signature check cannot see (an embedding sized for the wrong vocabulary)."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((FEATURES, CLASSES)) / np.sqrt(FEATURES)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.zeros(CLASSES, dtype=np.float32), "b"),
        numpy_helper.from_array(np.zeros((1, CLASSES), dtype=np.float32), "row_bias"),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "w", "b"], ["scores"]),
        helper.make_node("ReduceMax", ["input"], ["largest"], axes=[1], keepdims=0),
        helper.make_node("Cast", ["largest"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["row_bias", "index"], ["bias"], axis=0),
        helper.make_node("Add", ["scores", "bias"], ["logits"]),
    ]
    features, logits = _signature(FEATURES, CLASSES)
    return _finished(helper.make_graph(nodes, "lookup", [features], [logits], initializers))
