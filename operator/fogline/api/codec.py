"""Turns CR dicts into the frozen dataclasses of this package and back. Field types drive
it: JSON names are the camelCase of the Python names, None means absent, tuples are lists."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from fogline.api.errors import SpecError

T = TypeVar("T")


def json_name(field: dataclasses.Field[Any]) -> str:
    """The key of a dataclass field in the CR: metadata `json`, else camelCase of its name."""
    explicit = field.metadata.get("json")
    if isinstance(explicit, str):
        return explicit
    head, *rest = field.name.split("_")
    return head + "".join(part.title() for part in rest)


_HINTS: dict[type[Any], dict[str, Any]] = {}


def field_types(cls: type[Any]) -> dict[str, Any]:
    """Resolved type hints of a dataclass, cached (resolving them is slow)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def is_optional(hint: Any) -> bool:
    return _is_union(hint) and type(None) in get_args(hint)


def strip_optional(hint: Any) -> Any:
    """`X | None` -> X; anything else unchanged."""
    if not is_optional(hint):
        return hint
    rest = tuple(arg for arg in get_args(hint) if arg is not type(None))
    return rest[0] if len(rest) == 1 else Union[rest]  # noqa: UP007


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def _describe(hint: Any) -> str:
    if hint is str:
        return "a string"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is bool:
        return "true or false"
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(arg) for arg in get_args(hint))
    if get_origin(hint) is tuple:
        return "a list"
    if dataclasses.is_dataclass(hint) or get_origin(hint) in (dict, Mapping):
        return "an object"
    if _is_union(hint):
        return " or ".join(_describe(arg) for arg in get_args(hint) if arg is not type(None))
    return str(hint)


def decode(hint: Any, value: Any, path: str) -> Any:
    """`value` (plain JSON data) checked and converted to `hint`; SpecError names `path`."""
    if hint is Any:
        return value
    if _is_union(hint):
        if value is None and type(None) in get_args(hint):
            return None
        for arg in get_args(hint):
            if arg is type(None):
                continue
            try:
                return decode(arg, value, path)
            except SpecError:
                continue
        raise SpecError(path, f"must be {_describe(hint)}; got {value!r}")
    origin = get_origin(hint)
    if origin is Literal:
        if value in get_args(hint) and isinstance(value, str | bool):
            return value
        raise SpecError(path, f"must be {_describe(hint)}; got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise SpecError(path, f"must be a list; got {value!r}")
        (item,) = (arg for arg in get_args(hint) if arg is not Ellipsis)
        return tuple(decode(item, element, f"{path}[{i}]") for i, element in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise SpecError(path, f"must be an object; got {value!r}")
        _, item = get_args(hint)
        return {str(k): decode(item, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return decode_object(hint, value, path)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{path}: the codec does not handle the type {hint!r}")
    raise SpecError(path, f"must be {_describe(hint)}; got {value!r}")


def decode_object(cls: type[T], value: Any, path: str) -> T:
    """A dataclass from a JSON object; absent optional fields become None, unknown keys are
    ignored (the apiserver prunes them), an absent required field is a SpecError."""
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be an object; got {value!r}")
    hints = field_types(cls)
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not field.init:
            continue
        key = json_name(field)
        hint = hints[field.name]
        child = f"{path}.{key}" if path else key
        if key in value and value[key] is not None:
            kwargs[field.name] = decode(hint, value[key], child)
        elif is_optional(hint):
            kwargs[field.name] = None
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise SpecError(child, "is required")
    return cls(**kwargs)


def encode(value: Any) -> Any:
    """Plain JSON data from a dataclass, tuple or mapping; None fields are left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        result: dict[str, Any] = {}
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if item is not None:
                result[json_name(field)] = encode(item)
        return result
    if isinstance(value, tuple | list):
        return [encode(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    return value


def plain(value: Any) -> Any:
    """A deep copy of kopf bodies and other mappings as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
