"""From the status a controller wants to the merge patch that gets it there: only the keys
that change, and an explicit null for each key that no longer applies (a merge patch
never removes a key it does not name). Nothing to change is an empty patch: a steady
state writes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any


def _same(a: Any, b: Any) -> bool:
    return bool(
        json.dumps(_canonical(a), sort_keys=True) == json.dumps(_canonical(b), sort_keys=True)
    )


def _canonical(value: Any) -> Any:
    """A value as the API server gives it back: a number without its fraction (0.0 written,
    0 read, as a CRD `number` goes through Go's JSON). Compared as text, 0.0 and 0 differed,
    and every reconcile of a rollout patched status.rollout.waveStoppedSeconds at once."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    return value


def _object_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A nested object is desired whole: what it leaves out goes (a removed site leaves
    status.rollout.siteDigests)."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        old = current.get(key)
        if value is None:
            if old is not None:
                patch[key] = None
        elif isinstance(value, Mapping) and isinstance(old, Mapping):
            if inner := _object_patch(old, value):
                patch[key] = inner
        elif not _same(old, value):
            patch[key] = value
    for key in current:
        if key not in desired and current[key] is not None:
            patch[key] = None
    return patch


def status_patch(
    current: Mapping[str, Any], desired: Mapping[str, Any], removable: Iterable[str] = ()
) -> dict[str, Any]:
    """The merge patch from `current` to `desired`. At the top, `desired` may be partial
    (keys it leaves out stay) except for the keys of `removable`, which become null when
    left out; a None in `desired` removes its key; nested objects are desired whole."""
    whole = {key: desired.get(key) for key in removable}
    patch = _object_patch(
        {k: v for k, v in current.items() if k in desired or k in whole}, {**whole, **desired}
    )
    return patch
