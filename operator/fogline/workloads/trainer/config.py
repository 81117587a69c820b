"""The trainer's configuration: one frozen value parsed once from the command line, and the
checks the CRD cannot express for direct users of the command. No I/O and no torch here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fogline.workloads.trainer.compression.selection import STRUCTURED_PRUNING
from fogline.workloads.trainer.compression.settings import CompressionSettings, problems
from fogline.workloads.trainer.distillation.settings import DistillationSettings
from fogline.workloads.trainer.distillation.settings import problems as distillation_problems
from fogline.workloads.trainer.errors import TrainerError, invalid_argument

BUILTIN_ARCHITECTURES = ("mlp", "cnn")
OPTIMIZERS = ("adam", "adamw", "sgd")
EXPORT_FORMATS = ("onnx", "torchscript")
QUANTIZATIONS = ("none", "int8")
DEVICES = ("auto", "cpu", "cuda")
DATASET_FORMATS = ("auto", "npz", "csv")

_ENTRYPOINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_DIGEST = re.compile(r"^(sha256:)?([0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class TrainingConfig:
    model: str
    dataset: str
    output: Path
    dataset_digest: str | None = None
    dataset_format: str = "auto"
    validation_split: float = 0.2
    train_fraction: float = 1.0
    hidden_units: int = 128
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 0.001
    optimizer: str = "adam"
    seed: int = 0
    export_formats: tuple[str, ...] = ("onnx",)
    opset: int = 17
    quantize: str = "none"
    prune: float = 0.0
    artifact_uri: str | None = None
    name: str | None = None
    signing_key: Path | None = None  # EC private key (PEM): sign the artifact (model.sig)
    encryption_key: Path | None = None  # AES-256 key file: seal the model files
    device: str = "auto"
    mixed_precision: bool = True
    threads: int | None = None
    pvc_root: Path = field(default=Path("/mnt/pvc"))
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    distillation: DistillationSettings = field(default_factory=DistillationSettings)

    @property
    def is_entrypoint(self) -> bool:
        return ":" in self.model

    @property
    def model_name(self) -> str:
        if self.name:
            return self.name
        return self.model.rsplit(":", 1)[-1] if self.is_entrypoint else self.model

    def hyperparameters(self) -> dict[str, Any]:
        """The settings that shape the trained weights, as recorded in the manifest."""
        values: dict[str, Any] = {
            "model": self.model,
            "epochs": self.epochs,
            "batchSize": self.batch_size,
            "learningRate": self.learning_rate,
            "optimizer": self.optimizer,
            "seed": self.seed,
            "validationSplit": self.validation_split,
            "exportFormats": list(self.export_formats),
            "opset": self.opset,
            "quantization": self.quantize,
            "pruning": {"amount": self.prune},
        }
        if not self.is_entrypoint:
            values["hiddenUnits"] = self.hidden_units
        if self.train_fraction < 1:
            values["trainFraction"] = self.train_fraction
        if self.compression.enabled:
            values["compression"] = self.compression.describe()
        if self.distillation.enabled:
            values["distillation"] = self.distillation.describe()
        return values

    def checkpoint_fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to be resumed: all but the epoch count,
        so that a rerun with more epochs continues where the last one stopped."""
        return (
            {
                "model": self.model,
                "hiddenUnits": self.hidden_units,
                "dataset": self.dataset,
                "datasetDigest": self.dataset_digest,
                "validationSplit": self.validation_split,
                "batchSize": self.batch_size,
                "learningRate": self.learning_rate,
                "optimizer": self.optimizer,
                "seed": self.seed,
            }
            | ({"trainFraction": self.train_fraction} if self.train_fraction < 1 else {})
            | ({"distillation": self.distillation.describe()} if self.distillation.enabled else {})
        )


def normalize_digest(value: str) -> str:
    """Accepts `sha256:<hex>` or a bare hex digest; returns `sha256:<lowercase hex>`."""
    match = _DIGEST.match(value.strip())
    if match is None:
        raise invalid_argument(
            f"--dataset-digest: {value!r} is not a sha256 digest; use sha256:<64 hex digits>"
        )
    return f"sha256:{match.group(2).lower()}"


def validate(config: TrainingConfig) -> None:
    """Raises an InvalidArgument TrainerError naming the flag and the fix."""
    if config.model not in BUILTIN_ARCHITECTURES and not _ENTRYPOINT.match(config.model):
        raise TrainerError(
            "UnknownArchitecture",
            f"--model: unknown architecture {config.model!r}; use one of "
            f"{', '.join(BUILTIN_ARCHITECTURES)} or an entrypoint module:function",
        )
    checks: list[tuple[bool, str]] = [
        (1 <= config.epochs <= 10000, f"--epochs: {config.epochs} is outside 1..10000"),
        (
            1 <= config.batch_size <= 65536,
            f"--batch-size: {config.batch_size} is outside 1..65536",
        ),
        (
            0 < config.learning_rate <= 10,
            f"--lr: {config.learning_rate} must be above 0 and at most 10",
        ),
        (config.seed >= 0, f"--seed: {config.seed} must be 0 or more"),
        (
            0.05 <= config.validation_split <= 0.5,
            f"--validation-split: {config.validation_split} is outside 0.05..0.5",
        ),
        (
            0 < config.train_fraction <= 1,
            f"--train-fraction: {config.train_fraction} must be above 0 and at most 1",
        ),
        (
            1 <= config.hidden_units <= 65536,
            f"--hidden-units: {config.hidden_units} is outside 1..65536",
        ),
        (13 <= config.opset <= 21, f"--opset: {config.opset} is outside 13..21"),
        (0 <= config.prune <= 0.9, f"--prune: {config.prune} is outside 0..0.9"),
        (
            config.threads is None or config.threads >= 1,
            f"--threads: {config.threads} must be 1 or more",
        ),
        (bool(config.export_formats), "--export: name at least one format"),
        (
            len(set(config.export_formats)) == len(config.export_formats),
            f"--export: {','.join(config.export_formats)} names a format twice",
        ),
        (
            config.quantize != "int8" or "onnx" in config.export_formats,
            "--quantize int8 quantizes the ONNX model; add onnx to --export",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise invalid_argument(message)
    _validate_compression(config)
    for fmt in config.export_formats:
        if fmt not in EXPORT_FORMATS:
            raise invalid_argument(
                f"--export: unknown format {fmt!r}; use onnx, torchscript or onnx,torchscript"
            )


def _validate_compression(config: TrainingConfig) -> None:
    found = problems(config.compression) + distillation_problems(config.distillation)
    if config.compression.enabled and config.quantize != "none":
        found.append(
            "--quantize int8 serves the dynamic INT8 model whatever it measures; with "
            "--compress name int8-dynamic among the methods instead"
        )
    if config.compression.enabled and "onnx" not in config.export_formats:
        found.append("--compress builds and measures ONNX files; add onnx to --export")
    if config.is_entrypoint and STRUCTURED_PRUNING in config.compression.methods:
        found.append(
            "--compress structured-pruning removes neurons and channels of the built-in mlp "
            "and cnn only; drop it for an entrypoint model"
        )
    if found:
        raise invalid_argument(found[0])
