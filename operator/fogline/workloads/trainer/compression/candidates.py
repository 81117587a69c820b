"""Builds one file per compression method the settings allow, measures each the way the edge
runs it, and lets `selection` choose the one to serve. The files of candidates that were not
chosen are removed, so the artifact the edge fetches holds the float model and the chosen
one; the table in the manifest keeps what was measured of all of them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fogline.workloads.trainer.artifacts import INT8_FILE, ONNX_FILE
from fogline.workloads.trainer.compression import float16, quantization, sharing, structured
from fogline.workloads.trainer.compression.finetune import finetune
from fogline.workloads.trainer.compression.measure import accuracy_and_size, interleaved_latencies
from fogline.workloads.trainer.compression.selection import (
    FLOAT16,
    FLOAT32,
    INT8_DYNAMIC,
    INT8_STATIC,
    STRUCTURED_PRUNING,
    WEIGHT_SHARING,
    Candidate,
    Selection,
    select,
)
from fogline.workloads.trainer.compression.settings import CompressionSettings
from fogline.workloads.trainer.datasets import Split
from fogline.workloads.trainer.errors import EXIT_BAD_INPUT, TrainerError
from fogline.workloads.trainer.export import export_onnx

log = logging.getLogger(__name__)

#: The file each method writes in the artifact folder.
FILES = {
    FLOAT32: ONNX_FILE,
    INT8_DYNAMIC: INT8_FILE,
    INT8_STATIC: "model.int8-static.onnx",
    FLOAT16: "model.fp16.onnx",
    WEIGHT_SHARING: "model.shared.onnx",
    STRUCTURED_PRUNING: "model.structured.onnx",
}


@dataclass(frozen=True)
class FineTuning:
    """How the methods that change weights (sharing, structured pruning) fine-tune."""

    batch_size: int
    learning_rate: float
    seed: int


@dataclass(frozen=True)
class CompressionOutcome:
    selection: Selection
    serving_file: str
    files: tuple[str, ...]  # the candidate files kept besides model.onnx
    metrics: dict[str, float]
    details: dict[str, dict[str, Any]]


def calibration_rows(split: Split, samples: int, seed: int) -> np.ndarray:
    """A seeded sample of the training split: calibrating on the held-out split would let
    the quantizer see the rows the metric is measured on."""
    order = np.random.default_rng(seed).permutation(len(split.train_features))
    return np.asarray(split.train_features[order[:samples]], dtype=np.float32)


def build(
    method: str,
    model: nn.Module,
    split: Split,
    settings: CompressionSettings,
    *,
    output: Path,
    opset: int,
    tuning: FineTuning,
) -> dict[str, Any]:
    """Writes the method's file from model.onnx (already in `output`) or from `model`;
    returns what the table should say about how it was built."""
    source, target = output / ONNX_FILE, output / FILES[method]
    example = torch.as_tensor(split.validation_features[:2])
    if method == INT8_DYNAMIC:
        quantization.quantize_dynamic_int8(source, target)
        return {}
    if method == INT8_STATIC:
        rows = calibration_rows(split, settings.calibration_samples, tuning.seed)
        quantization.quantize_static_int8(source, target, rows, per_channel=settings.per_channel)
        return {"perChannel": settings.per_channel, "calibrationSamples": len(rows)}
    if method == FLOAT16:
        float16.convert_float16(source, target, keep_io_types=not settings.float16_io)
        return {"float16InputsOutputs": settings.float16_io}
    if method == WEIGHT_SHARING:
        shared_model, shared = sharing.share_weights(model, settings.sharing_bits)
        sharing.finetune_shared(
            shared_model,
            shared,
            split,
            epochs=settings.finetune_epochs,
            batch_size=tuning.batch_size,
            learning_rate=tuning.learning_rate,
            seed=tuning.seed,
        )
        float_copy = output / f"{FILES[method]}.float"
        try:
            export_onnx(shared_model, example, float_copy, opset)
            tensors = sharing.store_shared(float_copy, target, settings.sharing_bits)
        finally:
            float_copy.unlink(missing_ok=True)
        return {"bits": settings.sharing_bits, "sharedTensors": tensors}
    if method == STRUCTURED_PRUNING:
        pruned = structured.prune_structured(model, settings.structured_amount)
        finetune(
            pruned,
            split,
            epochs=settings.finetune_epochs,
            batch_size=tuning.batch_size,
            learning_rate=tuning.learning_rate,
            seed=tuning.seed,
        )
        export_onnx(pruned, example, target, opset)
        return {
            "amount": settings.structured_amount,
            "parameters": structured.parameter_count(pruned),
            "parametersBefore": structured.parameter_count(model),
        }
    return {}


def compress(
    model: nn.Module,
    split: Split,
    settings: CompressionSettings,
    *,
    output: Path,
    opset: int,
    tuning: FineTuning,
    prefer: str | None = None,
) -> CompressionOutcome:
    """Builds and measures every candidate and chooses one; TrainerError BudgetNotMet when
    none meets the budget and the gate (a seeded rerun would measure the same)."""
    model = model.cpu().eval()
    budget = settings.budget
    measured: list[Candidate] = []
    details: dict[str, dict[str, Any]] = {}
    metrics: dict[str, float] = {}
    methods = settings.candidates()
    for method in methods:
        details[method] = build(
            method, model, split, settings, output=output, opset=opset, tuning=tuning
        )
    paths = [output / FILES[method] for method in methods]
    timings = interleaved_latencies(
        paths, split.validation_features, batch_size=budget.batch_size, threads=budget.threads
    )
    for method, path, (latency, runs) in zip(methods, paths, timings, strict=True):
        result = accuracy_and_size(path, split.validation_features, split.validation_labels)
        measured.append(
            Candidate(method, FILES[method], result.size_bytes, result.accuracy, latency)
        )
        if method != FLOAT32:
            key = method.replace("-", "_")
            metrics[f"accuracy_{key}"] = round(result.accuracy, 6)
            metrics[f"loss_{key}"] = round(result.loss, 6)
        log.info(
            "candidate %s: %s bytes, accuracy %.4f, latency p50 %.3f ms at batch %d (%d runs)",
            method,
            f"{result.size_bytes:,}",
            result.accuracy,
            latency,
            budget.batch_size,
            runs,
        )
    if "accuracy_int8_dynamic" in metrics:
        # The names earlier releases reported for the dynamic INT8 model.
        metrics["accuracy_int8"] = metrics["accuracy_int8_dynamic"]
        metrics["loss_int8"] = metrics["loss_int8_dynamic"]
    selection = select(measured, budget, prefer=prefer)
    chosen = selection.chosen
    for candidate in measured:
        if candidate.file != ONNX_FILE and (chosen is None or candidate.file != chosen.file):
            (output / candidate.file).unlink(missing_ok=True)
    if chosen is None:
        raise TrainerError("BudgetNotMet", selection.failure_message(), EXIT_BAD_INPUT)
    log.info("chose %s (%s)", chosen.method, FILES[chosen.method])
    kept = () if chosen.file == ONNX_FILE else (chosen.file,)
    return CompressionOutcome(selection, chosen.file, kept, metrics, details)
