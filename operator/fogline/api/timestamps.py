"""metav1.Time on the wire: the RFC 3339 UTC timestamps that status fields, conditions and
Events carry, written with second precision and read back as aware datetimes."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(now: datetime) -> str:
    """`now` as the RFC 3339 UTC timestamp with second precision that metav1.Time uses."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware; pass datetime.now(UTC)")
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime (a zone-less one is taken as UTC, so that
    it compares with `now`); None for an absent, empty or unreadable value, which callers
    treat as "not stamped" rather than failing on a field someone else wrote."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
