"""What every compression method shares when it writes an ONNX file: the libraries' chatter
kept out of the log, the result checked with onnx.checker, and any failure reported as one
TrainerError that names the method."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx

from fogline.workloads.trainer.errors import EXIT_RUNTIME_FAILURE, TrainerError

# Loggers that narrate the quantizer's and converter's internals at WARNING level.
_CHATTY_LOGGERS = ("onnxruntime", "onnxruntime.quantization", "root")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    loggers = [logging.getLogger(None if name == "root" else name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def checked(reason: str, what: str, target: Path) -> Iterator[None]:
    """Runs the body that writes `target`, then checks the file; any failure of the body or
    the check becomes TrainerError(reason)."""
    try:
        yield
        onnx.checker.check_model(onnx.load(str(target)), full_check=True)
    except TrainerError:
        raise
    except Exception as err:  # the libraries raise many unrelated types; report any of them
        lines = str(err).strip().splitlines()
        first = lines[0] if lines else type(err).__name__
        raise TrainerError(reason, f"{what} failed: {first}", EXIT_RUNTIME_FAILURE) from err
