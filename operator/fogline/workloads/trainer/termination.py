"""The termination message: the short JSON summary the operator reads from the pod status
(phase, metrics and the artifact, or a failure reason). It must fit the kubelet's 4096-byte
limit and be strict JSON (no NaN: the apiserver refuses a status patch that carries it);
building it is pure, writing it is best effort only where the path was not asked for."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fogline.workloads.trainer.errors import TrainerError

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
    data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
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
        overflow = (
            len(json.dumps(shortened, separators=(",", ":"), allow_nan=False).encode()) - MAX_BYTES
        )
        text = shortened["message"].encode()
        shortened["message"] = (
            text[: max(0, len(text) - overflow - 3)].decode(errors="ignore") + "..."
        )
    data = json.dumps(shortened, separators=(",", ":"), allow_nan=False).encode()
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


def check_writable(path: Path) -> None:
    """Fails fast when an explicitly asked-for path cannot be written: a result nobody can
    read is a failure, and better found before training than after it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
    except OSError as err:
        raise not_writable(path, err) from err


def not_writable(path: Path, err: OSError) -> TrainerError:
    return TrainerError(
        "TerminationLogNotWritable",
        f"termination log {path}: cannot write it ({err.strerror or err}); point "
        f"--termination-log or {ENVIRONMENT_VARIABLE} at a writable file, or leave both out",
    )


def write_message(path: Path, explicit: bool, message: Mapping[str, Any]) -> bool:
    """Writes the message. An unwritable default path (outside Kubernetes) is skipped; an
    explicit one raises a TerminationLogNotWritable TrainerError."""
    data = encode(message)
    try:
        if explicit:
            path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as sink:
            sink.write(data)
    except OSError as err:
        if explicit:
            raise not_writable(path, err) from err
        log.debug("no termination log at %s (%s); skipping it", path, err)
        return False
    return True
