"""Checks a status against a CRD's structural schema the way the apiserver does for what a
pure function can produce: strict JSON (Go's decoder refuses NaN and Infinity), then the
openAPIV3Schema's types, bounds, patterns, enums and formats. The schema keywords are JSON
Schema draft 4's (boolean exclusiveMinimum included), so jsonschema does the checking; only
the Kubernetes formats int32 and int64 are added here. CEL rules are not evaluated: the
status schema has none."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from fogline.api.crds import openapi_schema

_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@_FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


def _without_deletions(patch: Any) -> Any:
    """A JSON merge patch's null removes its key: what is left is what gets stored."""
    if isinstance(patch, dict):
        return {k: _without_deletions(v) for k, v in patch.items() if v is not None}
    return patch


def status_errors(kind: str, status: dict[str, Any]) -> list[str]:
    """What the apiserver would refuse in a status merge patch of `kind`; empty when none."""
    status = _without_deletions(status)
    try:
        json.dumps(status, allow_nan=False)
    except ValueError as err:
        return [f"not strict JSON: {err}"]
    schema = openapi_schema(kind)["properties"]["status"]
    validator = jsonschema.Draft4Validator(schema, format_checker=_FORMATS)
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '(status)'}: {error.message}"
        for error in validator.iter_errors(status)
    ]
