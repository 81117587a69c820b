"""How the planner's Events and status messages name digests and sites: short and bounded
at any fleet size."""

from __future__ import annotations

from collections.abc import Sequence

from fogline.api.digests import digest_text

# Messages name at most this many sites: a first deployment's wave may hold every site, and
# status.message (4 KiB in the CRD) and Events must stay short at any fleet size.
MESSAGE_SITES = 10


def site_names_text(names: Sequence[str], limit: int = MESSAGE_SITES) -> str:
    """`a, b, c`, or the first `limit` names and how many more::

    ["s1", "s2"]             -> "s1, s2"
    ["s1", "s2", "s3"], 2    -> "s1, s2 and 1 more"
    """
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"


def short_digest(digest: str | None) -> str:
    """The one short form of a digest (fogline.api.digests) in a planner message, "none"
    when the rollout has no digest::

        "sha256:0123456789abcdef..." -> "0123456789ab"
        None                         -> "none"
    """
    return digest_text(digest, missing="none")
