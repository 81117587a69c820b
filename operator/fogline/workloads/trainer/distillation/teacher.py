"""The teacher's side of distillation: its artifact found and verified against the digest
(a local folder or file as it is, an s3://, oci:// or http(s):// artifact fetched by digest
with the edge's own fetch code), its logits for the training rows computed with ONNX Runtime,
and the student's loss that blends them with the labels."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
from torch import nn
from urllib3.exceptions import HTTPError as TransportError

from fogline.workloads import fetch
from fogline.workloads.manifest import (
    ArtifactError,
    ArtifactManifest,
    file_sha256,
    read_manifest,
    verify_artifact,
)
from fogline.workloads.trainer.config import normalize_digest
from fogline.workloads.trainer.datasets import resolve_local_path
from fogline.workloads.trainer.distillation.settings import DistillationSettings
from fogline.workloads.trainer.errors import EXIT_BAD_INPUT, EXIT_RUNTIME_FAILURE, TrainerError
from fogline.workloads.trainer.evaluation import run_onnx

log = logging.getLogger(__name__)


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


REMOTE_SCHEMES = ("s3", "oci", "http", "https")
# What each reason of a failed fetch becomes: a teacher changed after it was published or not
# an artifact is bad input; an unreachable store or refused credentials may pass on a retry
# (a rotated Secret reaches the next pod), as when publishing.
_FETCH_REASONS = {
    fetch.DIGEST_MISMATCH: ("TeacherDigestMismatch", EXIT_BAD_INPUT),
    fetch.INVALID: ("TeacherNotFound", EXIT_BAD_INPUT),
    fetch.ACCESS_DENIED: ("TeacherAccessDenied", EXIT_RUNTIME_FAILURE),
    fetch.UNREACHABLE: ("TeacherUnreachable", EXIT_RUNTIME_FAILURE),
}


@contextlib.contextmanager
def teacher_model(
    settings: DistillationSettings, pvc_root: Path, env: Mapping[str, str]
) -> Iterator[Path]:
    """The teacher's verified ONNX file while the context lasts: a remote artifact is fetched
    into a scratch folder, verified there and removed afterwards."""
    assert settings.teacher is not None
    if urlsplit(settings.teacher).scheme.lower() not in REMOTE_SCHEMES:
        yield teacher_file(settings, pvc_root)
        return
    with tempfile.TemporaryDirectory(prefix="fogline-teacher-") as scratch:
        yield fetched_teacher(settings, Path(scratch), env)


def fetched_teacher(settings: DistillationSettings, cache: Path, env: Mapping[str, str]) -> Path:
    """A remote teacher artifact fetched by its digest into `cache`, the way the edge fetches
    the artifacts it serves: the manifest checked against --teacher-digest (for oci:// the
    manifest blob is pulled by that digest) and every file against the manifest. The store is
    reached with the pod's access (AWS_* and FOGLINE_OCI_* variables, FOGLINE_CA_BUNDLE)."""
    assert settings.teacher is not None and settings.teacher_digest is not None
    uri, digest = settings.teacher, normalize_digest(settings.teacher_digest)
    policy = fetch.TransferPolicy(ca_bundle=env.get("FOGLINE_CA_BUNDLE") or None)
    try:
        entry = fetch.fill_cache(
            lambda: fetch.resolve_source(uri, fetch.HttpTransport(policy), dict(env)),
            digest,
            cache,
        )
        manifest = read_manifest(entry)
    except fetch.UsageError as err:
        raise TrainerError("InvalidArgument", str(err).replace("--uri", "--teacher")) from err
    except fetch.FetchError as err:
        reason, code = _FETCH_REASONS.get(err.reason, ("TeacherUnreachable", EXIT_RUNTIME_FAILURE))
        hint = (
            "; the trainer reaches the teacher's store with spec.output.access"
            if reason == "TeacherAccessDenied"
            else ""
        )
        raise TrainerError(reason, f"--teacher {uri}: {err}{hint}", code) from err
    except ArtifactError as err:
        raise TrainerError("TeacherDigestMismatch", f"--teacher {uri}: {err}") from err
    except (TransportError, OSError) as err:
        # What the transport raised that fetch's own loops did not turn into a FetchError,
        # as `fogline fetch` reports it: the scratch folder is not the output storage.
        text = " ".join(str(err).split()) or type(err).__name__
        raise TrainerError(
            "TeacherUnreachable", f"--teacher {uri}: {text}", EXIT_RUNTIME_FAILURE
        ) from err
    log.info("teacher %s fetched and verified: %s", uri, digest)
    return plaintext_model(entry, manifest, uri)


def plaintext_model(folder: Path, manifest: ArtifactManifest, uri: str) -> Path:
    """The artifact's serving file, refused when it is sealed (manifest.encryption): its bytes
    are ciphertext that ONNX Runtime cannot read."""
    if manifest.raw.get("encryption") is not None:
        raise TrainerError(
            "TeacherEncrypted",
            f"--teacher {uri}: the artifact is encrypted (manifest.encryption); the trainer "
            "reads teachers in plaintext, so distil from an unencrypted artifact of the teacher",
        )
    return folder / manifest.serving.file


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
        return plaintext_model(location, manifest, settings.teacher)
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
    settings: DistillationSettings,
    pvc_root: Path,
    train_features: np.ndarray,
    classes: int,
    env: Mapping[str, str],
) -> SoftTargets:
    with teacher_model(settings, pvc_root, env) as path:
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
