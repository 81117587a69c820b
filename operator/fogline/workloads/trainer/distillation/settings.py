"""The distillation settings of one trainer run, their flags and their checks. Pure: no
torch, no files."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DistillationSettings:
    """teacher None means no distillation: the student learns from the labels alone."""

    teacher: str | None = None
    teacher_digest: str | None = None
    temperature: float = 4.0
    weight: float = 0.7

    @property
    def enabled(self) -> bool:
        return self.teacher is not None

    def describe(self) -> dict[str, Any]:
        """As the manifest's hyperparameters and the checkpoint fingerprint record it."""
        return {
            "teacher": self.teacher,
            "teacherDigest": self.teacher_digest,
            "temperature": self.temperature,
            "weight": self.weight,
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "distillation",
        "Train on a teacher's softened outputs as well as the labels: the loss is "
        "(1 - weight) x cross-entropy(labels) + weight x T^2 x KL(teacher || student) at "
        "temperature T.",
    )
    group.add_argument(
        "--teacher",
        help="the teacher: an artifact folder (manifest.json) or an .onnx file, as a path, "
        "file:// or pvc://<claim>/<path>; or a published artifact, s3://<bucket>/<prefix>, "
        "oci://<registry>/<repository> or http(s)://, fetched by --teacher-digest",
    )
    group.add_argument(
        "--teacher-digest",
        help="the teacher artifact's digest (sha256:<hex> of its manifest.json), or the .onnx "
        "file's sha256; required",
    )
    group.add_argument(
        "--distill-temperature", type=float, default=4.0, help="softening temperature T (4)"
    )
    group.add_argument(
        "--distill-weight",
        type=float,
        default=0.7,
        help="share of the loss given to the teacher's outputs, 0..1 (0.7)",
    )


def settings_from(args: argparse.Namespace) -> DistillationSettings:
    return DistillationSettings(
        teacher=args.teacher,
        teacher_digest=args.teacher_digest,
        temperature=args.distill_temperature,
        weight=args.distill_weight,
    )


def problems(settings: DistillationSettings) -> list[str]:
    found: list[str] = []
    if not settings.enabled:
        if settings.teacher_digest is not None:
            found.append("--teacher-digest without --teacher; name the teacher artifact")
        return found
    if not settings.teacher_digest:
        found.append(
            "--teacher needs --teacher-digest, the teacher artifact's sha256:<hex> digest, so "
            "the student learns from the model that was evaluated"
        )
    if not 0.05 <= settings.temperature <= 100:
        found.append(f"--distill-temperature: {settings.temperature} is outside 0.05..100")
    if not 0 <= settings.weight <= 1:
        found.append(f"--distill-weight: {settings.weight} is outside 0..1")
    return found
