"""Measures exported models the way the edge will run them: ONNX Runtime on the CPU, on the
held-out split. Also reads an ONNX file's input/output signature for the manifest.
It never trains and never writes files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

EVALUATION_BATCH = 4096

# ONNX TensorProto element types -> Open Inference Protocol datatype names.
_OIP_DATATYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "BYTES",
}


@dataclass(frozen=True)
class Score:
    loss: float
    accuracy: float


def cross_entropy_and_accuracy(logits: np.ndarray, labels: np.ndarray) -> Score:
    """Mean softmax cross-entropy and top-1 accuracy, computed stably in float64."""
    values = logits.astype(np.float64)
    shifted = values - values.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].mean())
    accuracy = float((values.argmax(axis=1) == labels).mean())
    return Score(loss=loss, accuracy=accuracy)


def run_onnx(path: Path, features: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    parts = [
        session.run(None, {input_name: features[start : start + EVALUATION_BATCH]})[0]
        for start in range(0, len(features), EVALUATION_BATCH)
    ]
    return np.concatenate(parts, axis=0)


def evaluate_onnx(path: Path, features: np.ndarray, labels: np.ndarray) -> Score:
    return cross_entropy_and_accuracy(run_onnx(path, features.astype(np.float32)), labels)


def onnx_signature(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs as Open Inference Protocol tensor metadata; -1 marks a dynamic axis."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [_tensor(value) for value in graph.input if value.name not in initializers]
    outputs = [_tensor(value) for value in graph.output]
    return inputs, outputs


def _tensor(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor_type = value.type.tensor_type
    shape = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim]
    elem = tensor_type.elem_type
    datatype = _OIP_DATATYPES.get(elem) or onnx.TensorProto.DataType.Name(elem)
    return {"name": value.name, "datatype": datatype, "shape": shape}
