"""Turns a trained torch model into serving files: optional magnitude pruning made permanent,
ONNX with a dynamic batch axis (checked with onnx.checker), TorchScript, and dynamic INT8
quantization of the ONNX graph. It writes files and nothing else."""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.nn.utils import prune

from fogline.workloads.trainer.errors import EXIT_RUNTIME_FAILURE, TrainerError

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Loggers that narrate the exporter's and quantizer's internals at WARNING level.
_CHATTY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir", "root")


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    saved = {name: logging.getLogger(name if name != "root" else None) for name in _CHATTY_LOGGERS}
    levels = {name: logger.level for name, logger in saved.items()}
    for logger in saved.values():
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            yield
    finally:
        for name, logger in saved.items():
            logger.setLevel(levels[name])


def pruned_copy(model: nn.Module, amount: float) -> tuple[nn.Module, float]:
    """A copy with the smallest `amount` of Linear and Conv weights (by magnitude, across
    all layers) set to zero and the pruning made permanent; returns it and its sparsity."""
    pruned = copy.deepcopy(model).cpu().eval()
    targets: list[tuple[nn.Module, str]] = [
        (module, "weight")
        for module in pruned.modules()
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
    ]
    if amount <= 0 or not targets:
        return pruned, _sparsity(targets)
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)  # type: ignore[no-untyped-call]
    return pruned, _sparsity(targets)


def _sparsity(targets: list[tuple[nn.Module, str]]) -> float:
    total = zeros = 0
    for module, name in targets:
        weight = getattr(module, name)
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return zeros / total if total else 0.0


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """ONNX through torch.export (the dynamo exporter) with the batch axis dynamic."""
    model = model.cpu().eval()
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet_exporters():
            torch.onnx.export(
                model,
                (example.cpu(),),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except Exception as err:  # the exporter raises many unrelated types; report any of them
        raise TrainerError(
            "ExportFailed", f"ONNX export failed: {_first_line(err)}", EXIT_RUNTIME_FAILURE
        ) from err


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """TorchScript by tracing (works for any single-tensor model; deprecated upstream but
    still the format many C++ and mobile runtimes load)."""
    try:
        with _quiet_exporters():
            traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                model.cpu().eval(), example.cpu()
            )
            torch.jit.save(traced, str(path))
    except Exception as err:  # tracing raises many unrelated types; report any of them
        raise TrainerError(
            "ExportFailed", f"TorchScript export failed: {_first_line(err)}", EXIT_RUNTIME_FAILURE
        ) from err


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic INT8: weights stored as int8, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet_exporters(), tempfile.TemporaryDirectory() as scratch:
            prepared = Path(scratch) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared))
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
        onnx.checker.check_model(onnx.load(str(target)), full_check=True)
    except Exception as err:  # the quantizer raises many unrelated types; report any of them
        raise TrainerError(
            "QuantizationFailed",
            f"INT8 quantization failed: {_first_line(err)}",
            EXIT_RUNTIME_FAILURE,
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
