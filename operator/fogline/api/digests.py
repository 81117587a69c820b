"""Artifact digests as the contract writes them: sha256:<64 lowercase hex> of the artifact's
canonical manifest. Parsing, shortening and naming only; computing digests belongs to the
workloads.

The short form, `short_digest`, is the one way a digest is shown to people: its first 12 hex
characters without the `sha256:` prefix (as `docker images` shows image IDs). The printer
columns (`artifactDigestShort`, `currentDigestShort`), `fogline status`, and the messages and
Events of training, of the edge status and of the rollout planner use it; `digest_text` is
the same form for any value a table or a message may meet."""

from __future__ import annotations

import re
from typing import overload

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


@overload
def short_digest(digest: str) -> str: ...
@overload
def short_digest(digest: None) -> None: ...
def short_digest(digest: str | None) -> str | None:
    """The short form of a digest (12 hex characters, no prefix); None stays None."""
    if digest is None:
        return None
    if not is_digest(digest):
        raise ValueError(f"{digest!r} is not a digest; expected sha256:<64 lowercase hex>")
    return digest.removeprefix("sha256:")[:SHORT_LENGTH]


def digest_text(digest: str | None, missing: str = "-") -> str:
    """The short form for a table cell or a message, whatever the value: ``missing`` for
    none, and a value that is no digest cut to the same width rather than failing::

        "sha256:0123456789abcdef..." -> "0123456789ab"
        None                         -> "-" (or ``missing``)
        "latest-and-more"            -> "latest-and-m"
    """
    if not digest:
        return missing
    return short_digest(digest) if is_digest(digest) else digest[:SHORT_LENGTH]
