"""One trainer run from a validated configuration and a loaded dataset to an artifact folder
and the termination message that describes it. It sequences the other rooms (training,
export, evaluation, artifacts) and owns no algorithm of its own."""

from __future__ import annotations

import logging
import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from fogline.workloads import encryption, signatures
from fogline.workloads.trainer import artifacts, export, termination
from fogline.workloads.trainer.architectures import build_model
from fogline.workloads.trainer.compression import candidates as compression
from fogline.workloads.trainer.compression.selection import FLOAT32, INT8_DYNAMIC, INT8_STATIC
from fogline.workloads.trainer.compression.settings import CompressionSettings
from fogline.workloads.trainer.config import TrainingConfig
from fogline.workloads.trainer.datasets import Dataset, Split, limit_training, split_dataset
from fogline.workloads.trainer.distillation.teacher import soft_targets
from fogline.workloads.trainer.distributed import ProcessContext, join_run, leave_run
from fogline.workloads.trainer.errors import diverged
from fogline.workloads.trainer.evaluation import evaluate_onnx, onnx_signature
from fogline.workloads.trainer.progress import EpochReport, reporter_from_environment
from fogline.workloads.trainer.training import TrainingResult, evaluate_module, fit, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    """What the primary rank produced: the manifest written and the termination message."""

    manifest: dict[str, Any]
    message: dict[str, Any]


def run_training(
    config: TrainingConfig, dataset: Dataset, env: Mapping[str, str]
) -> RunOutcome | None:
    """Trains, exports and evaluates; returns None on ranks other than 0."""
    context = join_run(config.device, config.mixed_precision)
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        split = limit_training(
            split_dataset(dataset, config.validation_split, config.seed),
            config.train_fraction,
            config.seed,
        )
        model = build_model(
            config.model, split.train_features, dataset.num_classes, config.hidden_units
        )
        if context.is_primary:
            config.output.mkdir(parents=True, exist_ok=True)
            log.info(
                "training %s on %s (%d train, %d validation samples) on %s%s%s",
                config.model,
                dataset.uri,
                len(split.train_labels),
                len(split.validation_labels),
                context.device,
                f", {context.launch.world_size} processes ({context.backend})"
                if context.is_distributed
                else "",
                ", mixed precision" if context.mixed_precision else "",
            )
        reporter = reporter_from_environment(env) if context.is_primary else None

        def on_epoch(report: EpochReport) -> None:
            log.info(report.log_line())
            if reporter is not None:
                reporter.report(report)

        teacher = None
        if config.distillation.enabled:
            teacher = soft_targets(
                config.distillation,
                config.pvc_root,
                split.train_features,
                dataset.num_classes,
                env,
            )
        result = fit(
            model, split, config, context, output=config.output, on_epoch=on_epoch, teacher=teacher
        )
    finally:
        leave_run(context)
    if not context.is_primary:
        return None
    return _package(config, dataset, split, result, context)


def _package(
    config: TrainingConfig,
    dataset: Dataset,
    split: Split,
    result: TrainingResult,
    context: ProcessContext,
) -> RunOutcome:
    output = config.output
    for stale in (
        artifacts.MANIFEST_NAME,
        artifacts.ONNX_FILE,
        artifacts.INT8_FILE,
        artifacts.TORCHSCRIPT_FILE,
        *compression.FILES.values(),
        signatures.SIGNATURE_FILE,
    ):
        (output / stale).unlink(missing_ok=True)  # the manifest goes last: no half artifacts
    for leftover in output.glob(f"*{encryption.SEALED_SUFFIX}"):
        leftover.unlink()

    model, sparsity = export.pruned_copy(result.model, config.prune)
    if config.prune > 0:
        log.info("pruned %.0f%% of the weights (sparsity %.3f)", config.prune * 100, sparsity)
    example = torch.as_tensor(split.validation_features[:2])
    files: list[str] = []
    metrics: dict[str, float] = {}
    if result.history:
        metrics["train_loss"] = round(result.history[-1].train_loss, 6)
    if config.prune > 0:
        metrics["sparsity"] = round(sparsity, 6)
    quantized = config.quantize == "int8"

    if "onnx" in config.export_formats:
        export.export_onnx(model, example, output / artifacts.ONNX_FILE, config.opset)
        files.append(artifacts.ONNX_FILE)
        score = evaluate_onnx(
            output / artifacts.ONNX_FILE, split.validation_features, split.validation_labels
        )
        metrics["accuracy"], metrics["loss"] = round(score.accuracy, 6), round(score.loss, 6)
    else:
        loss, accuracy = evaluate_module(
            model,
            torch.as_tensor(split.validation_features),
            torch.as_tensor(split.validation_labels),
        )
        metrics["accuracy"], metrics["loss"] = round(accuracy, 6), round(loss, 6)
    if "torchscript" in config.export_formats:
        export.export_torchscript(model, example, output / artifacts.TORCHSCRIPT_FILE)
        files.append(artifacts.TORCHSCRIPT_FILE)
    outcome = _compress(config, model, split)
    if outcome is None:
        serving = (
            artifacts.ONNX_FILE if "onnx" in config.export_formats else artifacts.TORCHSCRIPT_FILE
        )
        artifact_format = "onnx" if "onnx" in config.export_formats else "torchscript"
        served_accuracy = metrics["accuracy"]
    else:
        files += outcome.files
        if config.compression.enabled and outcome.files:
            # A compressed file was chosen to fit the device: the edge fetches every listed
            # file, so the float model leaves the artifact (its weights stay in checkpoints/).
            files.remove(artifacts.ONNX_FILE)
            (output / artifacts.ONNX_FILE).unlink()
        metrics.update(outcome.metrics)
        serving, artifact_format = outcome.serving_file, "onnx"
        chosen = outcome.selection.chosen
        assert chosen is not None  # compress() raises when nothing was chosen
        quantized = chosen.method in (INT8_DYNAMIC, INT8_STATIC)
        served_accuracy = (
            metrics["accuracy"]
            if chosen.method == FLOAT32
            else metrics[f"accuracy_{chosen.method.replace('-', '_')}"]
        )
    if serving.endswith(".onnx"):
        inputs, outputs = onnx_signature(output / serving)
    else:
        inputs = [
            {"name": export.INPUT_NAME, "datatype": "FP32", "shape": [-1, dataset.num_features]}
        ]
        outputs = [
            {"name": export.OUTPUT_NAME, "datatype": "FP32", "shape": [-1, dataset.num_classes]}
        ]

    # The exported model's outputs overflow: there is no result to report.
    for metric_name, value in [*metrics.items(), ("accuracy", served_accuracy)]:
        if isinstance(value, float) and not math.isfinite(value):
            raise diverged(
                result.epochs_done,
                f"{metric_name} of the exported model",
                value,
                config.learning_rate,
                config.optimizer,
            )
    evaluation = {"metric": "accuracy", "value": served_accuracy}
    sealed: dict[str, str] = {}
    if config.encryption_key is not None:
        # Sealed after every measurement, before the digests: the manifest lists (and the
        # digest covers) the ciphertext, which is all that ever leaves this folder.
        key = encryption.read_key(config.encryption_key, "spec.output.encryption.keySecret")
        sealed = encryption.seal_files(output, files, key)
        files = sorted(sealed)
        serving = f"{serving}{encryption.SEALED_SUFFIX}"
        log.info("encrypted %d file(s) with %s", len(sealed), encryption.ALGORITHM)
    records = artifacts.describe_files(output, files)
    dataset_record = dataset.describe() | {
        "validationSplit": config.validation_split,
        "trainSamples": len(split.train_labels),
        "validationSamples": len(split.validation_labels),
    }
    manifest = artifacts.build_manifest(
        name=config.model_name,
        created_at=datetime.now(UTC),
        files=records,
        serving_file=serving,
        inputs=inputs,
        outputs=outputs,
        metrics=metrics,
        evaluation=evaluation,
        quantized=quantized,
        hyperparameters=config.hyperparameters(),
        dataset=dataset_record,
        versions=framework_versions(),
        epochs=result.epochs_done,
    )
    table = outcome.selection.to_dict() if outcome is not None else None
    if outcome is not None and table is not None:
        manifest["compression"] = table | {
            "candidates": [
                row | {"details": outcome.details.get(row["method"], {})}
                for row in table["candidates"]
            ]
        }
    if sealed:
        manifest["encryption"] = encryption.sealing_document(sealed)
    manifest["training"] = {
        "device": context.device,
        "processes": context.launch.world_size,
        "backend": context.backend,
        "mixedPrecision": context.mixed_precision,
        "resumedFromEpoch": result.resumed_from,
    }
    digest = artifacts.write_manifest(output, manifest)
    if config.signing_key is not None:
        signatures.sign_artifact(output, config.signing_key)
        log.info("signed %s (%s)", digest, signatures.SIGNATURE_FILE)
    for name in files:
        log.info("wrote %s (%s bytes)", name, f"{records[name].size_bytes:,}")
    log.info(
        "accuracy %.4f%s; serving %s; artifact %s",
        metrics["accuracy"],
        f", served {served_accuracy:.4f}" if serving != artifacts.ONNX_FILE else "",
        serving,
        digest,
    )
    message = termination.success_message(
        epochs=result.epochs_done,
        metrics=metrics,
        evaluation=evaluation,
        artifact_uri=config.artifact_uri or str(output),
        digest=digest,
        artifact_format=artifact_format,
        size_bytes=sum(record.size_bytes for record in records.values()),
        quantized=quantized,
        compression=table,
    )
    return RunOutcome(manifest=manifest, message=message)


def _compress(
    config: TrainingConfig, model: torch.nn.Module, split: Split
) -> compression.CompressionOutcome | None:
    """The candidates of --compress, measured and chosen among; --quantize int8 alone is
    the dynamic INT8 candidate, served whatever it measures, as the flag always meant."""
    settings, prefer = config.compression, None
    if not settings.enabled:
        if config.quantize != "int8":
            return None
        settings, prefer = CompressionSettings(methods=(INT8_DYNAMIC,)), INT8_DYNAMIC
    tuning = compression.FineTuning(config.batch_size, config.learning_rate, config.seed)
    return compression.compress(
        model,
        split,
        settings,
        output=config.output,
        opset=config.opset,
        tuning=tuning,
        prefer=prefer,
    )


def framework_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from fogline import __version__

    return {
        "fogline": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
