"""FP16: every float32 initializer and computation converted to float16 (for edge GPUs and
NPUs that run half precision natively), with the graph's inputs and outputs kept float32
unless asked, so clients send and receive the same tensors as for the float model. The
conversion is onnxconverter-common's float16 converter as ONNX Runtime ships it."""

from __future__ import annotations

from pathlib import Path

import onnx

from fogline.workloads.trainer.compression.files import checked, quiet


def convert_float16(source: Path, target: Path, *, keep_io_types: bool = True) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    with checked("CompressionFailed", "float16 conversion", target):
        with quiet():
            model = convert_float_to_float16(
                onnx.load(str(source)), keep_io_types=keep_io_types, disable_shape_infer=False
            )
            # The converter appends the float32<->float16 casts of the inputs and outputs
            # after the other nodes; ONNX requires nodes in topological order.
            wrapped = OnnxModel(model)
            wrapped.topological_sort()
        onnx.save(wrapped.model, str(target))
