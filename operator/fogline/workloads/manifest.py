"""Reading and verifying an artifact folder's manifest.json on the consuming side (fetch, server).
Parses the contract's shape into typed values and checks every file's sha256 and size; it never
writes a trained artifact (the trainer does) and never touches the network.

The artifact digest is the sha256 of the manifest in canonical JSON (keys sorted, no spaces,
UTF-8), the OCI way: the manifest lists every file with its own sha256 and size, so no file of
an artifact can be swapped, added or removed under the same digest."""

from __future__ import annotations

import hashlib
import json
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
DIGEST_PATTERN = re.compile(r"^sha256:([0-9a-f]{64})$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
# A manifest lists files and a signature: a few kB. Anything near this bound is not one, and
# reading it whole would let a hostile store fill the fetcher's memory.
MANIFEST_MAX_BYTES = 1 << 20

# Open Inference Protocol datatype names, as the manifest spells them.
DATATYPES = frozenset(
    {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    }
)

# onnxruntime's type strings for the same element types.
ONNX_TYPE_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class ArtifactError(Exception):
    """The artifact folder is missing, malformed, or does not match its digests."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a dynamic dimension

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ServingSignature:
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class ArtifactManifest:
    name: str
    created_at: str
    files: dict[str, FileEntry]
    serving: ServingSignature
    quantized: bool = False
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def digest(self) -> str:
        """The whole-artifact digest: sha256 of the canonical manifest, as `sha256:<hex>`."""
        return manifest_digest(self.raw)

    @property
    def size_bytes(self) -> int:
        """The bytes of every listed file together (the manifest itself not counted)."""
        return sum(entry.size_bytes for entry in self.files.values())


def canonical_manifest_bytes(document: Any) -> bytes:
    """The one byte form of a manifest that its digest is taken over."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def manifest_digest(document: Any) -> str:
    """`sha256:<hex>` of the canonical form of a decoded manifest.json."""
    return "sha256:" + hashlib.sha256(canonical_manifest_bytes(document)).hexdigest()


def parse_digest(digest: str) -> str:
    """Return the hex part of a `sha256:<64 hex>` digest, or raise ValueError naming the form."""
    match = DIGEST_PATTERN.match(digest)
    if match is None:
        raise ValueError(f"digest {digest!r} is not of the form sha256:<64 lowercase hex>")
    return match.group(1)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def safe_relative_path(name: str) -> PurePosixPath:
    """A manifest file name as a relative path that stays inside the artifact folder."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise ArtifactError(f"manifest.files: {name!r} must be a relative path inside the folder")
    return path


def _tensor_specs(value: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list) or not value:
        raise ArtifactError(f"{where}: expected a non-empty list of tensors")
    specs = []
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise ArtifactError(f"{at}: expected an object with name, datatype and shape")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not name:
            raise ArtifactError(f"{at}.name: expected a non-empty string")
        if datatype not in DATATYPES:
            raise ArtifactError(f"{at}.datatype: {datatype!r} is not an Open Inference datatype")
        if not isinstance(shape, list) or not all(
            isinstance(dim, int) and not isinstance(dim, bool) and dim >= -1 for dim in shape
        ):
            raise ArtifactError(f"{at}.shape: expected a list of integers (-1 for dynamic)")
        specs.append(TensorSpec(name, str(datatype), tuple(shape)))
    return tuple(specs)


def parse_manifest(document: Any) -> ArtifactManifest:
    """Validate a decoded manifest.json; errors name the field that is wrong."""
    if not isinstance(document, dict):
        raise ArtifactError("manifest.json: expected a JSON object")
    if document.get("formatVersion") != FORMAT_VERSION:
        raise ArtifactError(
            f"manifest.formatVersion: {document.get('formatVersion')!r} is not supported; "
            f"expected {FORMAT_VERSION}"
        )
    raw_files = document.get("files")
    if not isinstance(raw_files, dict) or not raw_files:
        raise ArtifactError("manifest.files: expected an object mapping file names to digests")
    files: dict[str, FileEntry] = {}
    for name, entry in raw_files.items():
        if str(safe_relative_path(name)) == MANIFEST_FILE:
            raise ArtifactError("manifest.files: must not list manifest.json itself")
        if not isinstance(entry, dict):
            raise ArtifactError(f"manifest.files[{name!r}]: expected {{sha256, sizeBytes}}")
        sha, size = entry.get("sha256"), entry.get("sizeBytes")
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise ArtifactError(f"manifest.files[{name!r}].sha256: expected 64 lowercase hex")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ArtifactError(f"manifest.files[{name!r}].sizeBytes: expected an integer >= 0")
        files[name] = FileEntry(sha, size)
    serving = document.get("serving")
    if not isinstance(serving, dict):
        raise ArtifactError("manifest.serving: expected an object with file, inputs, outputs")
    serving_file = serving.get("file")
    if not isinstance(serving_file, str) or serving_file not in files:
        raise ArtifactError(
            f"manifest.serving.file: {serving_file!r} must name a file listed in manifest.files"
        )
    signature = ServingSignature(
        file=serving_file,
        inputs=_tensor_specs(serving.get("inputs"), "manifest.serving.inputs"),
        outputs=_tensor_specs(serving.get("outputs"), "manifest.serving.outputs"),
    )
    name = document.get("name")
    return ArtifactManifest(
        name=name if isinstance(name, str) and name else Path(serving_file).stem,
        created_at=str(document.get("createdAt", "")),
        files=files,
        serving=signature,
        quantized=bool(document.get("quantized", False)),
        raw=document,
    )


def _regular_size(path: Path) -> int:
    """The size of a regular file that is not a symlink (a link to /dev/zero fills disks)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: listed in manifest.json but missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise ArtifactError(f"{path}: not a regular file (symlinks and devices are refused)")
    return info.st_size


def read_manifest(folder: Path) -> ArtifactManifest:
    path = folder / MANIFEST_FILE
    if not path.exists() and not path.is_symlink():
        raise ArtifactError(f"{path}: no manifest.json in the artifact folder")
    if _regular_size(path) > MANIFEST_MAX_BYTES:
        raise ArtifactError(f"{path}: larger than {MANIFEST_MAX_BYTES} bytes; not a manifest")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ArtifactError(f"{path}: cannot read: {err.strerror}") from err
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: not valid JSON: {err}") from err
    return parse_manifest(document)


def verify_artifact(folder: Path, expected_digest: str | None = None) -> ArtifactManifest:
    """Check the manifest against the whole-artifact digest, then every listed file's size and
    sha256.

    Raises ArtifactError naming the first file that does not match; returns the manifest.
    """
    manifest = read_manifest(folder)
    if expected_digest is not None and manifest.digest != expected_digest:
        raise ArtifactError(
            f"{folder}: manifest digest {manifest.digest} is not the expected {expected_digest}"
        )
    for name, entry in manifest.files.items():
        path = folder / safe_relative_path(name)
        size = _regular_size(path)
        if size != entry.size_bytes:
            raise ArtifactError(f"{path}: size {size} differs from manifest's {entry.size_bytes}")
        actual = file_sha256(path)
        if actual != entry.sha256:
            raise ArtifactError(
                f"{path}: sha256 {actual} differs from manifest's {entry.sha256}; "
                "the artifact was modified or corrupted"
            )
    return manifest
