"""Per-epoch checkpoints in the output folder, so a retried Job continues instead of starting
over. Writes are atomic (temporary file, then rename) and only the newest few are kept;
this module knows nothing about how training uses the state it stores."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from fogline.workloads.trainer.errors import TrainerError

log = logging.getLogger(__name__)

CHECKPOINT_FOLDER = "checkpoints"
KEEP_NEWEST = 2
_PREFIX = "epoch-"
_SUFFIX = ".pt"


def checkpoint_path(output: Path, epoch: int) -> Path:
    return output / CHECKPOINT_FOLDER / f"{_PREFIX}{epoch:05d}{_SUFFIX}"


def checkpoints_newest_first(output: Path) -> list[Path]:
    folder = output / CHECKPOINT_FOLDER
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(_PREFIX) and p.suffix == _SUFFIX]
    return sorted(found, reverse=True)


def save_checkpoint(output: Path, epoch: int, state: dict[str, Any]) -> Path:
    path = checkpoint_path(output, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    try:
        # Through a Python file, so a full disk is an OSError naming ENOSPC (torch's own
        # writer reports it as "unexpected pos"); fsync before the rename, so the newest
        # checkpoint is complete or absent, never half written, even after a power cut.
        with partial.open("wb") as sink:
            torch.save(state, sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(partial, path)
    except BaseException:  # a full disk, a signal: the half-written file goes
        partial.unlink(missing_ok=True)
        raise
    for stale in checkpoints_newest_first(output)[KEEP_NEWEST:]:
        stale.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(output: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The newest readable checkpoint, or None. A checkpoint from a different configuration
    is refused rather than silently mixed into this run."""
    for path in checkpoints_newest_first(output):
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
            log.warning("skipping unreadable checkpoint %s: %s", path.name, err)
            continue
        if state.get("fingerprint") != fingerprint:
            raise TrainerError(
                "CheckpointMismatch",
                f"--output {output}: holds checkpoints of a different configuration "
                f"({path.name}); use a fresh --output or remove its {CHECKPOINT_FOLDER} folder",
            )
        return state
    return None
