"""The journal of a version being written: one line per unit that finished, so that a run
interrupted by Ctrl-C, ``kill -9`` or a failure elsewhere keeps what it finished.

The first line says which run it is (fingerprint, treatments, upstream versions, the schema).
Each further line is a complete unit, appended in one ``write`` after its artifacts and value
files are in place, so a line never vouches for a file that is not there; a torn or garbled
line is skipped.
Reading it unpickles nothing (values JSON cannot hold stay placeholders, as in ``_records``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CorruptRecordError
from ._metadata import SCHEMA_VERSION
from ._reads import reads_of
from ._records import (
    Encoder,
    UnitRecord,
    UnitTiming,
    _file_json,
    _Reader,
    decode_json,
    dump_json,
    modified_ns,
)

JOURNAL = "units.jsonl"


def journal_line(condition: str, unit: UnitRecord, warnings: Sequence[str],
                 encoder: Encoder) -> bytes:
    """The journal line of a finished unit and the warnings it gave (its value files go to
    ``encoder.side``)."""
    return dump_json({
        "condition": condition, "replicate": unit.replicate, "seed": unit.seed,
        "metrics": {n: encoder.encode(v) for n, v in unit.metrics.items()},
        "artifacts": {n: _file_json(f) for n, f in unit.artifacts.items()},
        "reads": unit.reads,
        "timing": None if unit.timing is None else unit.timing.to_json(),
        "warnings": list(warnings),
    }) + b"\n"


def _read_line(path: Path, data: bytes) -> tuple[str, UnitRecord, tuple[str, ...]]:
    try:
        obj = decode_json(data)
    except ValueError as exc:
        raise CorruptRecordError(f"{path}: not valid JSON ({exc})", path=path) from None
    r = _Reader(path, obj)
    arts = r.sub("artifacts")
    # Journals written before units carried their timing and warnings have neither.
    timing = r.obj.get("timing")
    warnings = r.get("warnings", list, [])
    if not all(isinstance(w, str) for w in warnings):
        r.fail("warnings", "expected a list of strings")
    unit = UnitRecord(r.get("replicate", int), "complete", r.get("seed", int),
                      r.get("metrics", dict), {n: arts.file(n) for n in arts.obj},
                      timing=None if timing is None else UnitTiming.read(r.sub("timing")),
                      reads=reads_of(r, "reads", r.obj.get("reads")))
    return r.get("condition", str), unit, tuple(warnings)


@dataclass(frozen=True)
class Journal:
    """The journal of a version that was never published (an interrupted run)."""

    number: int
    path: Path
    header: dict[str, Any]
    #: condition -> replicate -> the finished unit
    units: dict[str, dict[int, UnitRecord]]
    #: condition -> replicate -> the warnings the finished unit gave
    warnings: dict[str, dict[int, tuple[str, ...]]] = field(default_factory=dict)

    def recorded_ns(self) -> int | None:
        """When the journal was last appended to (None if it is gone): see FileRecord.problem."""
        return modified_ns(self.path / JOURNAL)

    @classmethod
    def read(cls, number: int, path: Path) -> Journal | None:
        """The journal of the version at ``path``, or None if it has none."""
        try:
            data = (path / JOURNAL).read_bytes()
        except OSError:
            return None
        lines = data.split(b"\n")[:-1]  # what follows the last newline may be torn
        try:
            header = json.loads(lines[0]) if lines else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("schema_version") != SCHEMA_VERSION:
            return None  # not a journal, or one of an older layout (its files lie elsewhere)
        units: dict[str, dict[int, UnitRecord]] = {}
        warnings: dict[str, dict[int, tuple[str, ...]]] = {}
        for line in lines[1:]:
            try:
                condition, unit, said = _read_line(path / JOURNAL, line)
            except CorruptRecordError:
                continue
            units.setdefault(condition, {})[unit.replicate] = unit
            warnings.setdefault(condition, {})[unit.replicate] = said
        return cls(number, path, header, units, warnings)
