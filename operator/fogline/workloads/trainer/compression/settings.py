"""The compression settings of one trainer run: which methods to build, how each one is
tuned, and the edge budget the chosen file must meet. Pure values and their checks; the
command line and the ModelTraining spec both end up here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fogline.workloads.trainer.compression.selection import FLOAT32, METHODS, Budget


@dataclass(frozen=True)
class CompressionSettings:
    """methods empty means no selection: the run serves what --quantize says, as before."""

    methods: tuple[str, ...] = ()
    per_channel: bool = False
    calibration_samples: int = 256
    float16_io: bool = False
    sharing_bits: int = 4
    structured_amount: float = 0.5
    finetune_epochs: int = 2
    budget: Budget = field(default_factory=Budget)

    @property
    def enabled(self) -> bool:
        return bool(self.methods)

    def candidates(self) -> tuple[str, ...]:
        """The methods to build, float32 first: the uncompressed model is always a
        candidate and the reference the others are measured against."""
        listed = set(self.methods) | {FLOAT32}
        return tuple(method for method in METHODS if method in listed)

    def describe(self) -> dict[str, Any]:
        """As the manifest's hyperparameters record it."""
        return {
            "methods": list(self.candidates()),
            "perChannel": self.per_channel,
            "calibrationSamples": self.calibration_samples,
            "float16InputsOutputs": self.float16_io,
            "sharingBits": self.sharing_bits,
            "structuredAmount": self.structured_amount,
            "fineTuneEpochs": self.finetune_epochs,
            "budget": self.budget.to_dict(),
        }


def problems(settings: CompressionSettings) -> list[str]:
    """What is wrong with the settings, each naming the flag and the fix."""
    found: list[str] = []
    for method in settings.methods:
        if method not in METHODS:
            found.append(f"--compress: unknown method {method!r}; use any of {', '.join(METHODS)}")
    if len(set(settings.methods)) != len(settings.methods):
        found.append(f"--compress: {','.join(settings.methods)} names a method twice")
    budget = settings.budget
    checks = [
        (
            1 <= settings.calibration_samples <= 100000,
            f"--calibration-samples: {settings.calibration_samples} is outside 1..100000",
        ),
        (
            1 <= settings.sharing_bits <= 8,
            f"--sharing-bits: {settings.sharing_bits} is outside 1..8",
        ),
        (
            0.05 <= settings.structured_amount <= 0.9,
            f"--structured-amount: {settings.structured_amount} is outside 0.05..0.9",
        ),
        (
            0 <= settings.finetune_epochs <= 1000,
            f"--finetune-epochs: {settings.finetune_epochs} is outside 0..1000",
        ),
        (
            budget.max_size_bytes is None or budget.max_size_bytes >= 1,
            f"--max-size-bytes: {budget.max_size_bytes} must be 1 or more",
        ),
        (
            budget.max_latency_ms is None or budget.max_latency_ms > 0,
            f"--max-latency-ms: {budget.max_latency_ms} must be above 0",
        ),
        (
            1 <= budget.batch_size <= 65536,
            f"--latency-batch-size: {budget.batch_size} is outside 1..65536",
        ),
        (1 <= budget.threads <= 256, f"--latency-threads: {budget.threads} is outside 1..256"),
        (0 <= budget.min_accuracy <= 1, f"--min-accuracy: {budget.min_accuracy} is outside 0..1"),
    ]
    found += [message for ok, message in checks if not ok]
    budgeted = budget.max_size_bytes is not None or budget.max_latency_ms is not None
    if budgeted and not settings.methods:
        found.append(
            "--max-size-bytes/--max-latency-ms choose among compression candidates; "
            "name them with --compress"
        )
    return found
