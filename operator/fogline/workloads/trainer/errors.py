"""The failures the trainer reports on purpose. Each carries a CamelCase reason for the
termination message and the exit code the command returns; nothing here does I/O."""

from __future__ import annotations

import errno
import math

EXIT_RUNTIME_FAILURE = 1
EXIT_BAD_INPUT = 2
# 128 + SIGTERM, what a shell reports for a process the signal ended. The Job's pod failure
# policy fails at once only on EXIT_BAD_INPUT, so an interrupted attempt is retried (or, with
# the DisruptionTarget condition of an eviction or preemption, not even counted).
EXIT_INTERRUPTED = 143

# Errors of the output storage that a retry on the same volume cannot fix.
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ENOENT}
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class TrainerError(Exception):
    """A failure with a machine-readable reason and a message that says what to fix."""

    def __init__(self, reason: str, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.exit_code = exit_code


def invalid_argument(message: str) -> TrainerError:
    return TrainerError("InvalidArgument", message)


class Interrupted(BaseException):
    """Raised by the SIGTERM handler. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way (logging's own error handler is one) swallows it."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def interrupted(signal_name: str, exit_code: int = EXIT_INTERRUPTED) -> TrainerError:
    return TrainerError(
        "Interrupted",
        f"stopped by {signal_name}; the newest finished epoch is checkpointed and a rerun "
        "with the same --output resumes from it",
        exit_code,
    )


def diverged(
    epoch: int, what: str, value: float, learning_rate: float, optimizer: str
) -> TrainerError:
    """A loss or metric that is no longer a finite number: the same seed and settings
    diverge again, so this is bad input (exit 2), not something a retry can fix."""
    return TrainerError(
        "TrainingDiverged",
        f"training diverged at epoch {epoch}: {what} is {value}; lower --lr (now "
        f"{learning_rate:g}) or use another --optimizer (now {optimizer})",
    )


def is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def storage_error(what: str, err: OSError) -> TrainerError | None:
    """The named failure for an error of the output storage, or None when the error says
    nothing about the storage (then it stays an unforeseen runtime failure)."""
    detail = err.strerror or str(err)
    if err.errno in _FULL:
        return TrainerError(
            "OutputFull",
            f"{what}: the output storage is full ({detail}); free space or give the "
            "training a larger volume",
        )
    if err.errno in _NOT_WRITABLE:
        return TrainerError(
            "OutputNotWritable",
            f"{what}: cannot write there ({detail}); point --output at a writable folder",
        )
    return None
