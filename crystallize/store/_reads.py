"""What a unit read, by content: the record resume compares to reuse a unit (see
``running._resume``), kept with each unit in ``metadata.json`` and in a version's journal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

#: producer -> artifact file name -> content hash of what a unit read (None: not available)
Reads = Mapping[str, Mapping[str, "str | None"]]


class _Failing(Protocol):
    def fail(self, key: str, message: str) -> Any: ...


def reads_of(reader: _Failing, key: str, value: Any) -> Reads | None:
    """``value`` as a unit's recorded reads: null, or producer -> file name -> hash (or null);
    anything else is the reader's error at ``key``."""
    if value is None:
        return value
    # Plain loops: a resume checks every read of every unit it reuses.
    if isinstance(value, dict):
        for names in value.values():
            if not isinstance(names, dict):
                break
            for h in names.values():
                if h is not None and not isinstance(h, str):
                    break
            else:
                continue
            break
        else:
            return value
    return reader.fail(key, "expected null or a mapping of producers to {file name: hash}")
