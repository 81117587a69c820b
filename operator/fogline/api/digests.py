"""Artifact digests as the contract writes them: sha256:<64 lowercase hex> of the artifact's
canonical manifest. Parsing, shortening and naming only; computing digests belongs to the
workloads."""

from __future__ import annotations

import re

DIGEST_PATTERN = re.compile(r"^sha256:[a-f0-9]{64}$")
SHORT_LENGTH = 12


def is_digest(value: str) -> bool:
    """True for sha256: followed by 64 lowercase hex characters."""
    return DIGEST_PATTERN.match(value) is not None


def oci_tag(digest: str) -> str:
    """The tag an oci:// artifact is pushed under: `sha256-<hex>` of its artifact digest, so
    an image volume can name it (the server then checks every file against the manifest)."""
    if not is_digest(digest):
        raise ValueError(f"{digest!r} is not a digest; expected sha256:<64 lowercase hex>")
    return digest.replace(":", "-")


def short_digest(digest: str | None) -> str | None:
    """The first 12 hex characters of a digest, for printer columns; None stays None."""
    if digest is None:
        return None
    if not is_digest(digest):
        raise ValueError(f"{digest!r} is not a digest; expected sha256:<64 lowercase hex>")
    return digest.removeprefix("sha256:")[:SHORT_LENGTH]
