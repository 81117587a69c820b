"""Scheduling types shared by both kinds: core/v1 tolerations and quantities as the CRDs
carry them. Typed here so builders never pick them out of raw dicts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from fogline.api.codec import encode
from fogline.api.errors import SpecError

#: A CPU or memory amount as the CRD accepts it: an integer or a quantity string.
Quantity = int | str

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


def quantity_value(quantity: Quantity) -> Decimal:
    """The amount a quantity stands for (cores or bytes); ValueError when it is not one."""
    if isinstance(quantity, int):
        return Decimal(quantity)
    match = _QUANTITY.match(quantity)
    if match is None:
        raise ValueError(f"{quantity!r} is not a quantity such as 500m, 2 or 4Gi")
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2)]
    except InvalidOperation:
        raise ValueError(f"{quantity!r} is not a quantity such as 500m, 2 or 4Gi") from None


def quantity_errors(path: str, amount: Quantity | None) -> list[SpecError]:
    """A resource quantity at `path` that does not parse or asks for nothing."""
    if amount is None:
        return []
    try:
        value = quantity_value(amount)
    except ValueError as err:
        return [SpecError(path, f"{err}; write it like 500m, 2 or 4Gi")]
    if value <= 0:
        return [SpecError(path, f"{amount!r} asks for nothing; use a positive amount or omit it")]
    return []


@dataclass(frozen=True)
class Toleration:
    """A core/v1 Toleration."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The toleration as a pod spec carries it."""
        result: dict[str, Any] = encode(self)
        return result
