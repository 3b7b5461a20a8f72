"""What a unit read, by content: the record resume compares to reuse a unit (see
``running._resume``), kept with each unit in ``metadata.json`` and in a version's journal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

#: producer -> artifact file name -> content hash of what a unit read (None: not available)
Reads = Mapping[str, Mapping[str, "str | None"]]


class _Failing(Protocol):
    def fail(self, key: str, message: str) -> Any: ...


def _hashes(names: object) -> bool:
    return isinstance(names, dict) and all(h is None or isinstance(h, str) for h in names.values())


def reads_of(reader: _Failing, key: str, value: Any) -> Reads | None:
    """``value`` as a unit's recorded reads: null, or producer -> file name -> hash (or null);
    anything else is the reader's error at ``key``."""
    if value is None or isinstance(value, dict) and all(map(_hashes, value.values())):
        return value
    return reader.fail(key, "expected null or a mapping of producers to {file name: hash}")
