"""Structural defaulting as the apiserver does it, driven by the CRD schema itself, so the
Python view of a spec sees the same defaults whether or not the apiserver applied them."""

from __future__ import annotations

import copy
from typing import Any


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """A copy of `value` with every absent field that has a `default` in `schema` filled in.

    Like the apiserver: a default is set only where its parent object exists, and the
    defaulted value is walked again, so `default: {}` on an object brings in the defaults
    of its own fields.
    """
    if isinstance(value, dict):
        properties: dict[str, Any] = schema.get("properties", {})
        result = {key: item for key, item in value.items()}
        for key, prop in properties.items():
            if key not in result and "default" in prop:
                result[key] = copy.deepcopy(prop["default"])
        extra = schema.get("additionalProperties")
        for key, item in result.items():
            if key in properties:
                result[key] = apply_defaults(properties[key], item)
            elif isinstance(extra, dict):
                result[key] = apply_defaults(extra, item)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return copy.deepcopy(value)
