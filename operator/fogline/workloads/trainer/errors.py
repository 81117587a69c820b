"""The failures the trainer reports on purpose. Each carries a CamelCase reason for the
termination message and the exit code the command returns; nothing here does I/O."""

from __future__ import annotations

EXIT_RUNTIME_FAILURE = 1
EXIT_BAD_INPUT = 2


class TrainerError(Exception):
    """A failure with a machine-readable reason and a message that says what to fix."""

    def __init__(self, reason: str, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.exit_code = exit_code


def invalid_argument(message: str) -> TrainerError:
    return TrainerError("InvalidArgument", message)
