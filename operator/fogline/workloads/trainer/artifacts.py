"""The artifact folder's manifest: per-file sha256 and size, the serving file's signature,
metrics, hyperparameters, dataset and framework versions. Its canonical form's sha256 is the
artifact digest. Building the manifest is pure; only `describe_files` and `write_manifest`
touch the disk."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fogline.workloads.manifest import canonical_manifest_bytes, manifest_digest
from fogline.workloads.trainer.datasets import sha256_file

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
TORCHSCRIPT_FILE = "model.pt"


@dataclass(frozen=True)
class FileRecord:
    sha256: str  # bare hex, as the manifest stores it
    size_bytes: int

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_files(folder: Path, names: Iterable[str]) -> dict[str, FileRecord]:
    records = {}
    for name in names:
        path = folder / name
        records[name] = FileRecord(
            sha256=sha256_file(path).removeprefix("sha256:"), size_bytes=path.stat().st_size
        )
    return records


def build_manifest(
    *,
    name: str,
    created_at: datetime,
    files: Mapping[str, FileRecord],
    serving_file: str,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    metrics: Mapping[str, float],
    evaluation: Mapping[str, Any],
    quantized: bool,
    hyperparameters: Mapping[str, Any],
    dataset: Mapping[str, Any],
    versions: Mapping[str, str],
    epochs: int,
) -> dict[str, Any]:
    if serving_file not in files:
        raise ValueError(f"serving file {serving_file} is not among the artifact files")
    return {
        "formatVersion": FORMAT_VERSION,
        "name": name,
        "createdAt": rfc3339(created_at),
        "files": {
            file: {"sha256": record.sha256, "sizeBytes": record.size_bytes}
            for file, record in sorted(files.items())
        },
        "serving": {"file": serving_file, "inputs": inputs, "outputs": outputs},
        "metrics": dict(metrics),
        "evaluation": dict(evaluation),
        "quantized": quantized,
        "epochs": epochs,
        "hyperparameters": dict(hyperparameters),
        "dataset": dict(dataset),
        "versions": dict(versions),
    }


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> str:
    """Write manifest.json in its canonical form and return the whole-artifact digest, which
    is then also the sha256 of the file's bytes (`sha256sum manifest.json` shows it)."""
    path = folder / MANIFEST_NAME
    partial = path.with_suffix(".partial")
    try:
        partial.write_bytes(canonical_manifest_bytes(manifest))  # strict JSON: no NaN
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return manifest_digest(manifest)
