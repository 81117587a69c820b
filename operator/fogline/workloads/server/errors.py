"""Domain errors of the inference server: what went wrong, in the protocol's terms.
The data plane and the model raise them; only the REST layer maps them to HTTP statuses."""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error a client can be told about."""


class InvalidInputError(InferenceError):
    """The request is malformed or does not fit the model's signature."""


class ModelNotFoundError(InferenceError):
    def __init__(self, name: str, version: str | None = None) -> None:
        what = f"model {name!r}" if version is None else f"model {name!r} version {version!r}"
        super().__init__(f"{what} is not served here")


class ModelNotReadyError(InferenceError):
    def __init__(self, name: str) -> None:
        super().__init__(f"model {name!r} is not ready")


class PayloadTooLargeError(InferenceError):
    """The request body exceeds --max-body-bytes."""


class OverloadedError(InferenceError):
    """The inference queue is full: the client should retry later (or elsewhere)."""


class UnauthorizedError(InferenceError):
    """The endpoint needs a bearer token and the request has none or another."""


class UnsupportedMediaTypeError(InferenceError):
    """The request uses an encoding this server does not speak."""


class InferenceFailedError(InferenceError):
    """The runtime failed on a request that passed validation."""
