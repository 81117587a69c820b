"""Encryption of a model at rest: the trainer seals the ONNX files of an artifact with
AES-256-GCM under a key from a Secret; the edge opens them in memory only, so no plaintext
model sits on an edge node's disk. The manifest lists the sealed files (its digest covers the
ciphertext) and says which plaintext name each one opens to. No network, no logging of keys.

A sealed file is a 12-byte random nonce followed by the GCM ciphertext and tag; the
associated data is the plaintext name, so a sealed file cannot pass for another one."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fogline.workloads.manifest import ArtifactError, ArtifactManifest, safe_relative_path

ALGORITHM = "AES-256-GCM"
KEY_BYTES = 32
NONCE_BYTES = 12
SEALED_SUFFIX = ".enc"

# The reasons the fetch step reports, shown on the site row as Init:<reason>.
KEY_MISSING, KEY_INVALID, NOT_ENCRYPTED = "ModelKeyMissing", "ModelKeyInvalid", "ModelNotEncrypted"


class ModelKeyError(Exception):
    """The key is missing, malformed, or not the one the model was sealed with."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Sealing:
    """manifest.encryption: the sealed files, each with the plaintext name it opens to."""

    algorithm: str
    files: Mapping[str, str]  # sealed name -> plaintext name


EDGE_KEY_FIELD = "spec.model.encryption.keySecret"


def read_key(path: Path | None, field: str = EDGE_KEY_FIELD) -> bytes:
    """The 32 raw bytes of an AES-256 key file (a Secret key mounted as a file); `field` names
    where a user sets the key. Messages name the file and its size, never its bytes."""
    if path is None or not path.is_file():
        raise ModelKeyError(
            KEY_MISSING,
            f"the artifact is encrypted and no key file was given ({path or 'none'}); name the "
            f"Secret holding the 32-byte key in {field}",
        )
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ModelKeyError(
            KEY_INVALID,
            f"{path} (from {field}): holds {len(key)} bytes; an AES-256 key is exactly "
            f"{KEY_BYTES} raw bytes (for example `head -c 32 /dev/urandom > key`)",
        )
    return key


def seal(key: bytes, plaintext: bytes, name: str) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, name.encode("utf-8"))


def open_sealed(key: bytes, sealed: bytes, name: str) -> bytes:
    """The plaintext of a sealed file; ModelKeyError when the key is not the sealing one."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(sealed) < NONCE_BYTES + 16:
        raise ModelKeyError(KEY_INVALID, f"{name}: too short to be an {ALGORITHM} sealed file")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], name.encode())
    except InvalidTag:
        # The digest already proved these are the trainer's bytes, so only the key is wrong.
        raise ModelKeyError(
            KEY_INVALID,
            f"{name}: the key does not open it ({ALGORITHM} tag mismatch); the Secret named by "
            "spec.model.encryption.keySecret holds another key than the training used",
        ) from None


def seal_files(folder: Path, names: Iterable[str], key: bytes) -> dict[str, str]:
    """Replace each named file by its sealed copy `<name>.enc`; returns sealed -> plaintext."""
    sealed: dict[str, str] = {}
    for name in names:
        plain_path = folder / name
        target = folder / f"{name}{SEALED_SUFFIX}"
        target.write_bytes(seal(key, plain_path.read_bytes(), name))
        plain_path.unlink()
        sealed[f"{name}{SEALED_SUFFIX}"] = name
    return sealed


def sealing_document(sealed: Mapping[str, str]) -> dict[str, Any]:
    """manifest.encryption as the trainer writes it."""
    return {"algorithm": ALGORITHM, "files": dict(sorted(sealed.items()))}


def parse_sealing(manifest: ArtifactManifest) -> Sealing | None:
    """manifest.encryption checked against the manifest's files; None for a plaintext model."""
    document = manifest.raw.get("encryption")
    if document is None:
        return None
    if not isinstance(document, dict) or document.get("algorithm") != ALGORITHM:
        raise ValueError(f"manifest.encryption.algorithm: only {ALGORITHM} is supported")
    files = document.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError("manifest.encryption.files: expected sealed name -> plaintext name")
    for sealed_name, plain_name in files.items():
        if sealed_name not in manifest.files:
            raise ValueError(f"manifest.encryption.files: {sealed_name!r} is not a listed file")
        if not isinstance(plain_name, str):
            raise ValueError(f"manifest.encryption.files[{sealed_name!r}]: expected a name")
        try:
            safe_relative_path(plain_name)
        except ArtifactError as err:
            raise ValueError(f"manifest.encryption.files[{sealed_name!r}]: {err}") from None
    if manifest.serving.file not in files:
        raise ValueError("manifest.encryption.files: the serving file must be among them")
    return Sealing(algorithm=ALGORITHM, files=dict(files))


def open_artifact(folder: Path, sealing: Sealing, key: bytes) -> dict[str, bytes]:
    """Every sealed file of a verified artifact folder, opened in memory, by plaintext name."""
    return {
        plain: open_sealed(key, (folder / safe_relative_path(sealed)).read_bytes(), plain)
        for sealed, plain in sealing.files.items()
    }
