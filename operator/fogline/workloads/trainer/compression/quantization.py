"""INT8 quantization of an exported ONNX model with onnxruntime.quantization: dynamic (weights
int8, activations quantized at run time) and static (activations calibrated on a sample, in
QDQ form, so ONNX Runtime fuses convolutions and matrix products into QLinearConv and
QLinearMatMul kernels). It writes files and nothing else."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fogline.workloads.trainer.compression.files import checked, quiet
from fogline.workloads.trainer.errors import EXIT_RUNTIME_FAILURE, TrainerError

CALIBRATION_BATCH = 32
# What static INT8 quantizes: the compute-heavy operators and the data movement between
# them. Elementwise arithmetic (the built-in models' input standardization is a Sub and a
# Mul) stays float: quantizing it only adds requantization steps.
QUANTIZED_OPERATORS = [
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Relu",
    "Clip",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Add",
    "Resize",
]
# A convolution whose output sums fewer products than this (input channels x kernel area,
# 9 for a 3x3 kernel on one channel) stays float: the int8 kernels lose to float ones on
# such short sums. Measured on the digits CNN at batch 64: 1.24x faster than float with
# its first convolution and the standardization quantized, 1.65x without.
MIN_INT8_CONV_REDUCTION = 32


def quantize_dynamic_int8(source: Path, target: Path) -> None:
    """Dynamic INT8: weights stored as int8, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with (
        checked("QuantizationFailed", "dynamic INT8 quantization", target),
        quiet(),
        tempfile.TemporaryDirectory() as scratch,
    ):
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)


def quantize_static_int8(
    source: Path, target: Path, calibration: np.ndarray, *, per_channel: bool = False
) -> None:
    """Static INT8 in QDQ form: unsigned 8-bit activations with ranges measured (MinMax) on
    `calibration` rows, signed 8-bit weights, per output channel when asked. Unsigned
    activations with signed weights is the pairing ONNX Runtime's x86 and Arm kernels are
    fastest at."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise TrainerError(
            "QuantizationFailed",
            "static INT8 needs calibration samples; the training split is empty",
            EXIT_RUNTIME_FAILURE,
        )
    input_name = onnx.load(str(source), load_external_data=False).graph.input[0].name
    rows = calibration.astype(np.float32)

    class _Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict[str, Any] | None:
            if self.start >= len(rows):
                return None
            batch = rows[self.start : self.start + CALIBRATION_BATCH]
            self.start += CALIBRATION_BATCH
            return {input_name: batch}

    with (
        checked("QuantizationFailed", "static INT8 quantization", target),
        quiet(),
        tempfile.TemporaryDirectory() as scratch,
    ):
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared),
            str(target),
            _Batches(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=QUANTIZED_OPERATORS,
            nodes_to_exclude=short_convolutions(onnx.load(str(prepared))),
        )


def short_convolutions(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes whose weight gives each output fewer than
    MIN_INT8_CONV_REDUCTION products to sum."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Conv"
        and len(shapes.get(node.input[1], [])) >= 3
        and int(np.prod(shapes[node.input[1]][1:])) < MIN_INT8_CONV_REDUCTION
    ]
