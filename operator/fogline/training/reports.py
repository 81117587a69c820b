"""What a training pod reports about itself (its progress annotation and its termination
message), read as untrusted input. Any pod that can annotate itself, or any custom image,
can write anything there; what reaches the ModelTraining's status must be what its schema
admits, or the apiserver refuses the whole status patch and the training freezes. So: size
bounds first, then strict JSON (no NaN or Infinity, which the apiserver's decoder refuses),
then each field's type, finiteness and range. A field that fails is dropped and named in
`problems`; nothing here raises. Pure: no I/O, no clock."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fogline.api.conditions import is_reason
from fogline.api.digests import is_digest
from fogline.api.timestamps import rfc3339

# The kubelet keeps at most 4096 bytes of a termination message; an annotation the trainer
# writes is about 200 bytes. Anything much larger is not a report worth parsing.
MAX_MESSAGE_BYTES = 4096
MAX_PROGRESS_BYTES = 4096
MAX_EPOCHS = 10000  # spec.hyperparameters.epochs' maximum
MAX_METRICS = 64  # status.metrics' maxProperties
MAX_INT64 = 2**63 - 1
MAX_URI = 2048
MAX_FAILURE_MESSAGE = 1024
MAX_REASON = 128
# Times a status shows: four-digit years (what RFC 3339 and metav1.Time need), and nothing
# before the Unix epoch, which no pod has seen.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class Parsed:
    """The fields that passed, and what was dropped (for one Warning Event)."""

    fields: dict[str, Any] | None
    problems: tuple[str, ...] = field(default=())


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def strict_json(raw: str, limit: int) -> tuple[Any, str | None]:
    """The decoded document, or None and why not. NaN, Infinity and -Infinity are refused,
    as Go's encoding/json (the apiserver) refuses them."""
    if len(raw.encode(errors="replace")) > limit:
        return None, f"is {len(raw.encode(errors='replace'))} bytes, more than {limit}"
    try:
        return json.loads(raw, parse_constant=_refuse_constant), None
    except (ValueError, RecursionError) as err:
        return None, f"is not strict JSON ({_short(str(err), 80)})"


def finite_number(value: Any, low: float = -math.inf, high: float = math.inf) -> float | None:
    """A real JSON number (never a bool) that is finite and within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a float's range
        return None
    if not math.isfinite(number) or not low <= number <= high:
        return None
    return number


def bounded_int(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


def timestamp(value: Any) -> datetime | None:
    """An RFC 3339 time with a zone (a naive one cannot be compared with the Job's)."""
    if not isinstance(value, str) or not _TIMESTAMP.match(value):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return moment if EARLIEST <= moment <= LATEST else None


def text(value: Any, limit: int) -> str | None:
    """A printable one-paragraph string, cut to `limit` characters."""
    if not isinstance(value, str):
        return None
    return _short(_CONTROL.sub(" ", value), limit)


def _short(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def parse_progress(raw: str) -> Parsed:
    """status.progress from the fogline.io/progress annotation. Epoch and epochs must be
    sound or the report is ignored; a bad optional field is dropped on its own."""
    document, why = strict_json(raw, MAX_PROGRESS_BYTES)
    if why is not None:
        return Parsed(None, (f"progress annotation {why}",))
    if not isinstance(document, Mapping):
        return Parsed(None, ("progress annotation is not a JSON object",))
    epochs = bounded_int(document.get("epochs"), 1, MAX_EPOCHS)
    epoch = bounded_int(document.get("epoch"), 0, epochs or 0)
    if epochs is None or epoch is None:
        return Parsed(
            None,
            (f"progress annotation needs whole numbers 0 <= epoch <= epochs <= {MAX_EPOCHS}",),
        )
    progress: dict[str, Any] = {"epoch": epoch, "epochs": epochs}
    problems: list[str] = []
    if "loss" in document:
        if (loss := finite_number(document["loss"])) is not None:
            progress["loss"] = loss
        else:
            problems.append("progress loss is not a finite number")
    if "samplesPerSecond" in document:
        if (rate := finite_number(document["samplesPerSecond"], 0.0)) is not None:
            progress["samplesPerSecond"] = rate
        else:
            problems.append("progress samplesPerSecond is not a finite number >= 0")
    if "metric" in document:
        metric = document["metric"]
        name = metric.get("name") if isinstance(metric, Mapping) else None
        value = finite_number(metric.get("value")) if isinstance(metric, Mapping) else None
        if isinstance(name, str) and _METRIC_NAME.match(name) and value is not None:
            progress["metric"] = {"name": name, "value": value}
        else:
            problems.append("progress metric needs a short name and a finite value")
    if "updatedAt" in document:
        if (updated := timestamp(document["updatedAt"])) is not None:
            progress["updatedAt"] = rfc3339(updated)
        else:
            problems.append("progress updatedAt is not an RFC 3339 time")
    return Parsed(progress, tuple(problems))


def parse_success(document: Mapping[str, Any]) -> Parsed:
    """metrics, evaluation value and artifact from a Succeeded termination message. The
    evaluation value is the gate's input: it must be a finite number within 0..1."""
    problems: list[str] = []
    metrics: dict[str, float] = {}
    raw_metrics = document.get("metrics")
    if isinstance(raw_metrics, Mapping):
        for name, value in raw_metrics.items():
            number = finite_number(value)
            if not isinstance(name, str) or not _METRIC_NAME.match(name) or number is None:
                problems.append(f"metric {_short(str(name), 40)!r} is not a named finite number")
            elif len(metrics) >= MAX_METRICS:
                problems.append(f"more than {MAX_METRICS} metrics; the rest are dropped")
                break
            else:
                metrics[name] = number
    elif raw_metrics is not None:
        problems.append("metrics is not an object")
    fields: dict[str, Any] = {"metrics": metrics}

    evaluation = document.get("evaluation")
    raw_value = evaluation.get("value") if isinstance(evaluation, Mapping) else None
    if raw_value is not None:
        if (value := finite_number(raw_value, 0.0, 1.0)) is not None:
            fields["value"] = value
        else:
            problems.append("evaluation value is not a finite number within 0..1")

    artifact = document.get("artifact")
    if isinstance(artifact, Mapping):
        digest = artifact.get("digest")
        if isinstance(digest, str) and is_digest(digest):
            fields["digest"] = digest
        elif digest is not None:
            problems.append("artifact digest is not sha256:<64 hex>")
        uri = artifact.get("uri")
        if isinstance(uri, str) and 0 < len(uri) <= MAX_URI and not _CONTROL.search(uri):
            fields["uri"] = uri
        elif uri is not None:
            problems.append(f"artifact uri is not a string of at most {MAX_URI} characters")
        fmt = artifact.get("format", "onnx")
        fields["format"] = fmt if isinstance(fmt, str) and len(fmt) <= 32 else "unknown"
        size = artifact.get("sizeBytes")
        if (checked := bounded_int(size, 0, MAX_INT64)) is not None:
            fields["sizeBytes"] = checked
        elif size is not None:
            problems.append("artifact sizeBytes is not a whole number of bytes")
        quantized = artifact.get("quantized", False)
        fields["quantized"] = quantized if isinstance(quantized, bool) else False
    elif artifact is not None:
        problems.append("artifact is not an object")
    return Parsed(fields, tuple(problems))


def parse_failure(document: Mapping[str, Any]) -> Parsed:
    """The reason (only a CamelCase one can become a condition's reason) and a bounded,
    printable message from a Failed termination message."""
    fields: dict[str, Any] = {}
    reason = document.get("reason")
    # A custom image may write any text as its reason; that is no fault, only never a
    # condition's reason.
    if isinstance(reason, str) and len(reason) <= MAX_REASON and is_reason(reason):
        fields["reason"] = reason
    message = text(document.get("message"), MAX_FAILURE_MESSAGE)
    if message:
        fields["message"] = message
    return Parsed(fields)
