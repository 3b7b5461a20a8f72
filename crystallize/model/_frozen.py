"""Read-only copies of context values, so no in-place change can leak between steps or units.

Dicts, lists, sets and tuples become read-only versions of themselves, all the way down (the
read-only dict and list subclass ``dict`` and ``list``, so ``isinstance`` checks, ``json`` and
iteration keep working); NumPy arrays become read-only views. Any other object is deep-copied,
so it is private to the unit that holds it; one that cannot be copied (a lock, a connection)
is shared as it is.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import enum
import fractions
import pathlib
from typing import Any, NoReturn

_IMMUTABLE = (
    type(None), bool, int, float, complex, str, bytes, range, decimal.Decimal,
    fractions.Fraction, pathlib.PurePath, enum.Enum, datetime.date, datetime.time,
    datetime.timedelta, datetime.timezone,
)


def _refuse(self: _ReadOnly, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(
        f"this {self._base.__name__} is a context value and read-only: changing it in place "
        "would change what other steps and units see. Work on a copy (dict(value), "
        "list(value), copy.deepcopy(value)) and add it under a new key"
    )


class _ReadOnly:
    """What the read-only containers share: a copy is the object itself (nothing can change
    it), and pickling rebuilds it from a plain ``_base`` of its items."""

    _base: type[Any]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._base(self),))

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self


class FrozenDict(_ReadOnly, dict[Any, Any]):
    """A ``dict`` that refuses every change."""

    _base = dict
    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse


class FrozenList(_ReadOnly, list[Any]):
    """A ``list`` that refuses every change."""

    _base = list
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse


def _numpy_readonly(value: Any) -> Any:
    view = value.view()
    view.flags.writeable = False
    return view


def freeze(value: Any) -> Any:
    """``value`` made safe to share: read-only all the way down, or a private deep copy."""
    kind = type(value)
    if isinstance(value, _IMMUTABLE) or kind in (FrozenDict, FrozenList):
        return value
    if kind is dict:
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if kind is list:
        return FrozenList(freeze(v) for v in value)
    if kind is tuple:
        return tuple(freeze(v) for v in value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return kind(*(freeze(v) for v in value))
    if kind in (set, frozenset):
        return frozenset(freeze(v) for v in value)
    if kind is bytearray:
        return bytes(value)
    if kind.__module__ == "numpy":
        if kind.__name__ != "ndarray":
            return value  # a numpy scalar: immutable
        if not value.dtype.hasobject:
            return _numpy_readonly(value)
    try:
        return copy.deepcopy(value)
    except Exception:  # cannot be copied (a lock, a connection): shared by intent
        return value
