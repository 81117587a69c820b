"""The teacher's side of distillation: its artifact found and verified against the digest,
its logits for the training rows computed with ONNX Runtime, and the student's loss that
blends them with the labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fogline.workloads.manifest import ArtifactError, file_sha256, verify_artifact
from fogline.workloads.trainer.config import normalize_digest
from fogline.workloads.trainer.datasets import resolve_local_path
from fogline.workloads.trainer.distillation.settings import DistillationSettings
from fogline.workloads.trainer.errors import TrainerError
from fogline.workloads.trainer.evaluation import run_onnx


@dataclass(frozen=True)
class SoftTargets:
    """The teacher's logits for every training row (in the split's order) and how to blend
    them into the student's loss."""

    logits: torch.Tensor
    temperature: float
    weight: float

    def to(self, device: torch.device) -> SoftTargets:
        return SoftTargets(self.logits.to(device), self.temperature, self.weight)

    def loss(self, student: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(1 - w) CE(labels) + w T^2 KL(teacher_T || student_T): the T^2 keeps the soft
        term's gradients on the scale of the hard one's (Hinton et al., 2015)."""
        hard = nn.functional.cross_entropy(student, labels)
        t = self.temperature
        soft = nn.functional.kl_div(
            nn.functional.log_softmax(student.float() / t, dim=1),
            nn.functional.log_softmax(self.logits[rows].float() / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return (1 - self.weight) * hard + self.weight * t * t * soft


def teacher_file(settings: DistillationSettings, pvc_root: Path) -> Path:
    """The teacher's ONNX file, verified: an artifact folder's manifest against
    --teacher-digest (the whole-artifact digest) and every file against the manifest, or a
    bare .onnx file's sha256 against it."""
    assert settings.teacher is not None and settings.teacher_digest is not None
    digest = normalize_digest(settings.teacher_digest)
    try:
        location = resolve_local_path(settings.teacher, pvc_root)
    except TrainerError as err:
        raise TrainerError("TeacherNotFound", err.message.replace("dataset", "--teacher")) from err
    if location.is_dir():
        try:
            manifest = verify_artifact(location, digest)
        except ArtifactError as err:
            reason = (
                "TeacherNotFound" if "no manifest.json" in str(err) else "TeacherDigestMismatch"
            )
            raise TrainerError(reason, f"--teacher {settings.teacher}: {err}") from err
        return location / manifest.serving.file
    if not location.is_file():
        raise TrainerError(
            "TeacherNotFound",
            f"--teacher {settings.teacher}: no artifact folder or .onnx file at {location}",
        )
    actual = f"sha256:{file_sha256(location)}"
    if actual != digest:
        raise TrainerError(
            "TeacherDigestMismatch",
            f"--teacher {settings.teacher}: sha256 is {actual}, not --teacher-digest {digest}",
        )
    return location


def soft_targets(
    settings: DistillationSettings, pvc_root: Path, train_features: np.ndarray, classes: int
) -> SoftTargets:
    path = teacher_file(settings, pvc_root)
    logits = run_onnx(path, train_features.astype(np.float32))
    if logits.ndim != 2 or logits.shape != (len(train_features), classes):
        raise TrainerError(
            "TeacherMismatch",
            f"--teacher {settings.teacher}: outputs shape {list(logits.shape)} for "
            f"{len(train_features)} rows; the student needs [{len(train_features)}, {classes}] "
            "(a teacher trained on the same classes)",
        )
    return SoftTargets(
        torch.as_tensor(logits, dtype=torch.float32), settings.temperature, settings.weight
    )
