"""Builds small artifact folders (an MLP as ONNX plus manifest.json, per the artifact contract)
for the server and fetch tests, without the trainer. Deterministic weights from a seed.

Besides the MLP, two artifacts with the same signature (64 features in, 10 logits out) that a
rollout's analysis must stop: a wide CNN, correct and much slower per request, and one whose
every real request fails in onnxruntime although it loads, warms up and becomes Ready."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fogline.workloads.manifest import manifest_digest


@dataclass(frozen=True)
class MlpShape:
    features: int = 64
    hidden: int = 32
    layers: int = 1  # hidden layers
    classes: int = 10


def mlp_weights(shape: MlpShape, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight [in, out], bias [out]) per layer, float32."""
    rng = np.random.default_rng(seed)
    sizes = [shape.features] + [shape.hidden] * shape.layers + [shape.classes]
    return [
        (
            (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32),
            (rng.standard_normal(n_out) * 0.1).astype(np.float32),
        )
        for n_in, n_out in itertools.pairwise(sizes)
    ]


def mlp_onnx(weights: list[tuple[np.ndarray, np.ndarray]]) -> onnx.ModelProto:
    nodes, initializers = [], []
    current = "input"
    for index, (weight, bias) in enumerate(weights):
        initializers += [
            numpy_helper.from_array(weight, f"w{index}"),
            numpy_helper.from_array(bias, f"b{index}"),
        ]
        last = index == len(weights) - 1
        out = "logits" if last else f"h{index}"
        nodes.append(helper.make_node("Gemm", [current, f"w{index}", f"b{index}"], [f"g{index}"]))
        nodes.append(helper.make_node("Identity" if last else "Relu", [f"g{index}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["batch", weights[0][0].shape[0]]
            )
        ],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["batch", weights[-1][0].shape[1]]
            )
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_artifact(
    folder: Path, shape: MlpShape = MlpShape(), seed: int = 0, name: str = "digits"
) -> str:
    """Write model.onnx and manifest.json into folder; returns the artifact digest."""
    return write_model_artifact(folder, mlp_onnx(mlp_weights(shape, seed)), shape, name)


def write_model_artifact(
    folder: Path, model: onnx.ModelProto, shape: MlpShape = MlpShape(), name: str = "digits"
) -> str:
    """Write `model` as model.onnx with its manifest.json (input `input` [-1, features],
    output `logits` [-1, classes]); returns the artifact digest."""
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / "model.onnx"
    model_path.write_bytes(model.SerializeToString())
    data = model_path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    manifest = {
        "formatVersion": 1,
        "name": name,
        "createdAt": "2026-11-01T00:00:00Z",
        "files": {"model.onnx": {"sha256": sha, "sizeBytes": len(data)}},
        "serving": {
            "file": "model.onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, shape.features]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, shape.classes]}],
        },
        "metrics": {"accuracy": 0.9},
        "evaluation": {"metric": "accuracy", "value": 0.9},
        "quantized": False,
        "versions": {"onnx": onnx.__version__},
    }
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
    features, logits = _signature(64, 10)
    return _finished(helper.make_graph(nodes, "wide_cnn", [features], [logits], initializers))


def failing_onnx(seed: int = 0) -> onnx.ModelProto:
    """The test MLP plus a per-row bias looked up in a table by the row's largest value, a
    table exported with one entry: the server's warm-up run on zeros looks up entry 0 and
    passes, so the model loads and becomes Ready, while every real digits row (values up to
    16) indexes past the table and onnxruntime fails the run: the request gets a 500. The
    kind of bug a shape check cannot see (an embedding sized for the wrong vocabulary)."""
    mlp = mlp_onnx(mlp_weights(MlpShape(), seed))
    graph = mlp.graph
    for node in graph.node:
        if node.output[0] == "logits":
            node.output[0] = "scores"
    table = np.zeros((1, 10), dtype=np.float32)
    graph.initializer.append(numpy_helper.from_array(table, "row_bias"))
    graph.node.extend(
        [
            helper.make_node("ReduceMax", ["input"], ["largest"], axes=[1], keepdims=0),
            helper.make_node("Cast", ["largest"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["row_bias", "index"], ["bias"], axis=0),
            helper.make_node("Add", ["scores", "bias"], ["logits"]),
        ]
    )
    onnx.checker.check_model(mlp)
    return mlp


def write_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A P-256 key pair as PEM files (private PKCS#8, public SubjectPublicKeyInfo), the kind
    `openssl ecparam -name prime256v1 -genkey` makes; returns (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def write_sealed_artifact(folder: Path, key: bytes, seed: int = 0, name: str = "digits") -> str:
    """write_artifact, then model.onnx sealed with AES-256-GCM as the trainer does it: the
    manifest lists model.onnx.enc and says it opens to model.onnx. Returns the digest."""
    from fogline.workloads.encryption import seal_files, sealing_document

    write_artifact(folder, seed=seed, name=name)
    manifest = json.loads((folder / "manifest.json").read_text())
    sealed = seal_files(folder, ["model.onnx"], key)
    data = (folder / "model.onnx.enc").read_bytes()
    manifest["files"] = {
        "model.onnx.enc": {"sha256": hashlib.sha256(data).hexdigest(), "sizeBytes": len(data)}
    }
    manifest["serving"]["file"] = "model.onnx.enc"
    manifest["encryption"] = sealing_document(sealed)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest_digest(manifest)
