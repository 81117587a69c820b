"""The one error type of the API room: a spec or status that does not fit the contract.
It names the field path and says how to fix it; handlers turn it into a PermanentError."""

from __future__ import annotations


class SpecError(ValueError):
    """A field of a custom resource is wrong; `field` is its path, such as spec.rollout.retry."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpecError):
            return NotImplemented
        return (self.field, self.message) == (other.field, other.message)

    def __hash__(self) -> int:
        return hash((self.field, self.message))
