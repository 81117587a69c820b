"""The termination message: the short JSON summary the operator reads from the pod status
(phase, metrics and the artifact, or a failure reason). It must fit the kubelet's 4096-byte
limit; building it is pure, writing it is best effort where the path was not asked for."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_BYTES = 4096
DEFAULT_PATH = Path("/dev/termination-log")
ENVIRONMENT_VARIABLE = "FOGLINE_TERMINATION_LOG"


def success_message(
    *,
    epochs: int,
    metrics: Mapping[str, float],
    evaluation: Mapping[str, Any],
    artifact_uri: str,
    digest: str,
    artifact_format: str,
    size_bytes: int,
    quantized: bool,
    compression: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    message = {
        "phase": "Succeeded",
        "epochs": epochs,
        "metrics": dict(metrics),
        "evaluation": dict(evaluation),
        "artifact": {
            "uri": artifact_uri,
            "digest": digest,
            "format": artifact_format,
            "sizeBytes": size_bytes,
            "quantized": quantized,
        },
    }
    if compression is not None:
        message["compression"] = dict(compression)
    return message


def failure_message(reason: str, message: str) -> dict[str, Any]:
    return {"phase": "Failed", "reason": reason, "message": message}


def encode(message: Mapping[str, Any]) -> bytes:
    """Compact JSON within MAX_BYTES: a long failure message is shortened, a long metrics
    map keeps only the headline entries."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) <= MAX_BYTES:
        return data
    shortened = dict(message)
    if isinstance(shortened.get("metrics"), Mapping):
        headline = ("accuracy", "loss", "accuracy_int8", "loss_int8")
        shortened["metrics"] = {k: v for k, v in shortened["metrics"].items() if k in headline}
    if isinstance(shortened.get("compression"), Mapping):
        # The candidates' measurements stay; their reasons are in the manifest too.
        table = dict(shortened["compression"])
        table["candidates"] = [
            {k: v for k, v in row.items() if k != "reason"} for row in table.get("candidates", [])
        ]
        shortened["compression"] = table
    if isinstance(shortened.get("message"), str):
        overflow = len(json.dumps(shortened, separators=(",", ":")).encode()) - MAX_BYTES
        text = shortened["message"].encode()
        shortened["message"] = (
            text[: max(0, len(text) - overflow - 3)].decode(errors="ignore") + "..."
        )
    data = json.dumps(shortened, separators=(",", ":")).encode()
    if len(data) > MAX_BYTES:
        raise ValueError(f"termination message of {len(data)} bytes exceeds {MAX_BYTES}")
    return data


def resolve_path(flag: str | None, env: Mapping[str, str]) -> tuple[Path, bool]:
    """The path to write and whether it was asked for (flag or environment) explicitly."""
    if flag:
        return Path(flag), True
    if env.get(ENVIRONMENT_VARIABLE):
        return Path(env[ENVIRONMENT_VARIABLE]), True
    return DEFAULT_PATH, False


def write_message(path: Path, explicit: bool, message: Mapping[str, Any]) -> bool:
    """Writes the message; an unwritable default path (outside Kubernetes) is skipped."""
    data = encode(message)
    try:
        if explicit:
            path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as sink:
            sink.write(data)
    except OSError as err:
        if explicit:
            log.warning("could not write the termination message to %s: %s", path, err)
        else:
            log.debug("no termination log at %s (%s); skipping it", path, err)
        return False
    return True
