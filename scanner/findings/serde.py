"""Lossless JSON round trips for frozen dataclasses, driven by their type hints.

One generic converter instead of a ``from_dict`` per class: the findings schema
grows with every measurement, and hand-written converters drift from the
fields they convert.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class FrozenDict(dict[K, V]):
    """A dict that refuses changes: the mapping fields of frozen findings (timings, counts by reason). Still a
    ``dict`` for JSON, templates and pickling (a read-only ``MappingProxyType`` would not pickle)."""

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("findings are read-only; build a new record with dataclasses.replace")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse  # type: ignore[assignment]

    def __reduce__(self):
        return (FrozenDict, (dict(self),))


def freeze_mappings(record: object) -> None:
    """In a frozen dataclass's ``__post_init__``: replace each dict field by a ``FrozenDict`` copy, so that neither
    the caller who built the record nor a reader of it can change it afterwards."""
    for field in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, field.name)
        if isinstance(value, dict) and not isinstance(value, FrozenDict):
            object.__setattr__(record, field.name, FrozenDict(value))


def to_jsonable(value: Any) -> Any:
    """Dataclasses, lists, tuples and dicts to plain JSON values; non-finite floats as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [field.name for field in dataclasses.fields(value)] + list(getattr(value, "__derived__", ()))
        return {name: to_jsonable(getattr(value, name)) for name in names}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no NaN or Infinity; a scan that saw them must still say so.
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def from_jsonable(kind: Any, value: Any) -> Any:
    """Rebuild a value of type ``kind`` from what ``to_jsonable`` produced."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(kind) if option is not type(None)]
        if value is None:
            return None
        return from_jsonable(options[0], value)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ValueError(f"{kind.__name__}: expected an object, found {type(value).__name__}")
        hints = typing.get_type_hints(kind)
        known = {field.name for field in dataclasses.fields(kind)}
        # Derived numbers are written for readers of the JSON and recomputed here, never trusted.
        value = {name: item for name, item in value.items() if name not in getattr(kind, "__derived__", ())}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"{kind.__name__}: unknown fields {sorted(unknown)}")
        missing = {field.name for field in dataclasses.fields(kind)
                   if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING} - set(value)
        if missing:
            raise ValueError(f"{kind.__name__}: missing fields {sorted(missing)}")
        return kind(**{name: from_jsonable(hints[name], item) for name, item in value.items()})
    if origin in (list, tuple):
        args = typing.get_args(kind)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple(from_jsonable(arg, item) for arg, item in zip(args, value))
        items = [from_jsonable(args[0] if args else Any, item) for item in value]
        return tuple(items) if origin is tuple else items
    if origin in (dict, FrozenDict):
        key_kind, item_kind = typing.get_args(kind)
        return {key: from_jsonable(item_kind, item) for key, item in value.items()}
    if kind is float:
        return float(value)  # also reads back the "nan", "inf" and "-inf" that to_jsonable wrote
    return value
