"""Datasets the trainer reads: the built-in digits, NPZ and CSV files from a local path, a
PVC path or an http(s) URI checked against its digest. Returns plain numpy arrays; it never
imports torch, so bad input fails fast and without a model in memory."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from fogline.workloads.trainer.config import normalize_digest
from fogline.workloads.trainer.errors import EXIT_RUNTIME_FAILURE, TrainerError

log = logging.getLogger(__name__)

BUILTIN_DIGITS = "builtin:digits"
DOWNLOAD_TIMEOUT_SECONDS = 60
MAX_CLASSES = 65536
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Dataset:
    """Features as float32 rows (N, D) and integer class labels (N,), with where they came from."""

    features: np.ndarray
    labels: np.ndarray
    uri: str
    format: str
    digest: str

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    def describe(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "format": self.format,
            "digest": self.digest,
            "samples": len(self.labels),
            "features": self.num_features,
            "classes": self.num_classes,
        }


@dataclass(frozen=True)
class Split:
    train_features: np.ndarray
    train_labels: np.ndarray
    validation_features: np.ndarray
    validation_labels: np.ndarray


def load_dataset(
    uri: str,
    *,
    fmt: str = "auto",
    digest: str | None = None,
    pvc_root: Path = Path("/mnt/pvc"),
    download_dir: Path | None = None,
) -> Dataset:
    """Loads and checks a dataset; raises TrainerError with a Dataset* reason on bad input."""
    expected = normalize_digest(digest) if digest else None
    if uri.startswith("builtin:"):
        return _load_builtin(uri, expected)
    if uri.startswith(("http://", "https://")):
        if expected is None:
            raise TrainerError(
                "DatasetDigestRequired",
                f"dataset {uri}: an http(s) dataset needs --dataset-digest sha256:<hex>",
            )
        path = _download(uri, expected, download_dir)
        try:
            return _load_file(path, uri, fmt, expected)
        finally:
            path.unlink(missing_ok=True)
    if uri.startswith("s3://"):
        raise TrainerError(
            "DatasetUnsupported",
            f"dataset {uri}: this trainer reads builtin:, local, pvc:// and http(s) datasets; "
            "stage s3 data on a PVC or serve it over https",
        )
    return _load_file(resolve_local_path(uri, pvc_root), uri, fmt, expected)


def resolve_local_path(uri: str, pvc_root: Path) -> Path:
    """Maps a local path, file:// URI or pvc://<claim>/<path> to a file path."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if uri.startswith("pvc://"):
        rest = PurePosixPath(uri.removeprefix("pvc://"))
        if len(rest.parts) < 2 or ".." in rest.parts or rest.is_absolute():
            raise TrainerError(
                "DatasetNotFound", f"dataset {uri}: use pvc://<claim>/<path inside the claim>"
            )
        return pvc_root.joinpath(*rest.parts)
    if "://" in uri:
        raise TrainerError(
            "DatasetUnsupported",
            f"dataset {uri}: unknown scheme; use builtin:digits, a path, pvc://, http(s)://",
        )
    return Path(uri)


def split_dataset(dataset: Dataset, validation_fraction: float, seed: int) -> Split:
    """A seeded split, stratified by class so that every class is trained on and evaluated
    (a class missing from either side would make the gate's accuracy meaningless); the same
    seed gives the same split. A class too small to be on both sides is refused."""
    counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
    too_small = [str(label) for label, count in enumerate(counts.tolist()) if count < 2]
    if too_small:
        raise TrainerError(
            "DatasetInvalid",
            f"dataset {dataset.uri}: class {_listed(too_small)} has fewer than 2 samples, "
            "so it cannot be both trained on and evaluated; add samples of it or relabel",
        )
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    for label in range(dataset.num_classes):
        members = rng.permutation(np.flatnonzero(dataset.labels == label))
        count = len(members)
        held_out = min(max(1, round(count * validation_fraction)), count - 1)
        held.append(members[:held_out])
        kept.append(members[held_out:])
    validation = rng.permutation(np.concatenate(held))
    train = rng.permutation(np.concatenate(kept))
    return Split(
        train_features=dataset.features[train],
        train_labels=dataset.labels[train],
        validation_features=dataset.features[validation],
        validation_labels=dataset.labels[validation],
    )


def limit_training(split: Split, fraction: float, seed: int) -> Split:
    """The split with a seeded, class-stratified share of its training rows (at least one row
    a class) and the same held-out rows: runs at different fractions, or a distilled student
    and its labels-only twin, are scored on the very same rows."""
    if fraction >= 1:
        return split
    # Its own stream: the subset must not change how the split or the weights are drawn.
    rng = np.random.default_rng([seed, 1])
    kept: list[np.ndarray] = []
    for label in np.unique(split.train_labels).tolist():
        members = rng.permutation(np.flatnonzero(split.train_labels == label))
        kept.append(members[: max(1, round(len(members) * fraction))])
    rows = rng.permutation(np.concatenate(kept))
    return Split(
        train_features=split.train_features[rows],
        train_labels=split.train_labels[rows],
        validation_features=split.validation_features,
        validation_labels=split.validation_labels,
    )


def _listed(labels: list[str], limit: int = 5) -> str:
    shown = ", ".join(labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _load_builtin(uri: str, expected: str | None) -> Dataset:
    if uri != BUILTIN_DIGITS:
        raise TrainerError(
            "DatasetNotFound", f"dataset {uri}: unknown built-in dataset; use {BUILTIN_DIGITS}"
        )
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(features, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    actual = f"sha256:{digest.hexdigest()}"
    _check_digest(uri, expected, actual)
    return _checked(features, labels, uri, "builtin", actual)


def _load_file(path: Path, uri: str, fmt: str, expected: str | None) -> Dataset:
    if not path.is_file():
        raise TrainerError("DatasetNotFound", f"dataset {uri}: no such file")
    actual = sha256_file(path)
    _check_digest(uri, expected, actual)
    resolved = fmt if fmt != "auto" else _format_from_name(uri)
    if resolved == "npz":
        features, labels = _read_npz(path, uri)
    else:
        features, labels = _read_csv(path, uri)
    return _checked(features, labels, uri, resolved, actual)


def _format_from_name(uri: str) -> str:
    suffix = PurePosixPath(uri.split("?", 1)[0]).suffix.lower()
    if suffix in (".npz", ".csv"):
        return suffix[1:]
    raise TrainerError(
        "DatasetInvalid",
        f"dataset {uri}: cannot tell the format from the name; pass --dataset-format npz or csv",
    )


def _read_npz(path: Path, uri: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            for features_key, labels_key in (("x", "y"), ("features", "labels")):
                if {features_key, labels_key} <= names:
                    return archive[features_key], archive[labels_key]
    except Exception as err:  # zip, zlib, header or pickle errors: all say the file is bad
        raise TrainerError(
            "DatasetInvalid", f"dataset {uri}: not a readable NPZ file: {err}"
        ) from err
    raise TrainerError(
        "DatasetInvalid",
        f"dataset {uri}: an NPZ dataset needs arrays x and y (or features and labels); "
        f"found {', '.join(sorted(names)) or 'none'}",
    )


def _read_csv(path: Path, uri: str) -> tuple[np.ndarray, np.ndarray]:
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and not _is_numeric_row(lines[0]):
        lines = lines[1:]  # a header row
    try:
        table = np.loadtxt(io.StringIO("\n".join(lines)), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise TrainerError(
            "DatasetInvalid", f"dataset {uri}: not numeric CSV (label in the last column): {err}"
        ) from err
    if table.shape[1] < 2:
        raise TrainerError(
            "DatasetInvalid", f"dataset {uri}: a CSV row needs features and a label, last"
        )
    return table[:, :-1], table[:, -1]


def _is_numeric_row(line: str) -> bool:
    try:
        [float(cell) for cell in line.split(",")]
    except ValueError:
        return False
    return True


def _checked(features: Any, labels: Any, uri: str, fmt: str, digest: str) -> Dataset:
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim < 1 or labels.ndim != 1 or len(features) != len(labels):
        raise TrainerError(
            "DatasetInvalid",
            f"dataset {uri}: features {features.shape} and labels {labels.shape} do not pair up",
        )
    if len(labels) < 2:
        raise TrainerError("DatasetInvalid", f"dataset {uri}: needs at least 2 samples")
    try:
        rows = features.reshape(len(features), -1).astype(np.float32)
        numeric_labels = labels.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise TrainerError("DatasetInvalid", f"dataset {uri}: not numeric: {err}") from err
    if not np.isfinite(rows).all():
        raise TrainerError("DatasetInvalid", f"dataset {uri}: features hold NaN or infinity")
    if (
        not np.isfinite(numeric_labels).all()
        or (numeric_labels < 0).any()
        or (numeric_labels != np.round(numeric_labels)).any()
    ):
        raise TrainerError(
            "DatasetInvalid", f"dataset {uri}: labels must be class numbers 0, 1, 2, ..."
        )
    # Checked before any integer conversion or per-class count: a label of 1e20 overflows
    # int64 and one of 1e9 would size the model's output layer (and a count) by it.
    largest = float(numeric_labels.max())
    if largest >= MAX_CLASSES:
        raise TrainerError(
            "DatasetInvalid",
            f"dataset {uri}: label {largest:g} is too large; labels are class numbers "
            f"0..K-1 with at most {MAX_CLASSES} classes",
        )
    classes = numeric_labels.astype(np.int64)
    if classes.max() < 1:
        raise TrainerError("DatasetInvalid", f"dataset {uri}: needs at least 2 classes")
    absent = np.flatnonzero(np.bincount(classes) == 0)
    if len(absent):
        raise TrainerError(
            "DatasetInvalid",
            f"dataset {uri}: labels skip class {_listed([str(c) for c in absent.tolist()])}; "
            f"labels must be 0..{int(classes.max())} with every class present",
        )
    return Dataset(np.ascontiguousarray(rows), classes, uri, fmt, digest)


def _check_digest(uri: str, expected: str | None, actual: str) -> None:
    if expected is not None and expected != actual:
        raise TrainerError(
            "DatasetDigestMismatch",
            f"dataset {uri}: digest is {actual}, expected {expected}",
        )


def _download(uri: str, expected: str, download_dir: Path | None) -> Path:
    """Streams the body to a temporary file; the digest is checked when the file is read."""
    handle, name = tempfile.mkstemp(prefix="dataset-", dir=download_dir)
    path = Path(name)
    log.info("downloading dataset %s", uri)
    try:
        with (
            os.fdopen(handle, "wb") as sink,
            urllib.request.urlopen(uri, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response,
        ):
            shutil.copyfileobj(response, sink, _CHUNK)
    except urllib.error.HTTPError as err:
        path.unlink(missing_ok=True)
        reason = "DatasetNotFound" if err.code == 404 else "DatasetDownloadFailed"
        code = 2 if err.code == 404 else EXIT_RUNTIME_FAILURE
        raise TrainerError(reason, f"dataset {uri}: HTTP {err.code}", code) from err
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        path.unlink(missing_ok=True)
        raise TrainerError(
            "DatasetDownloadFailed", f"dataset {uri}: download failed: {err}", EXIT_RUNTIME_FAILURE
        ) from err
    log.debug("downloaded %s, expecting %s", uri, expected)
    return path
