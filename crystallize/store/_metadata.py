"""``vN/metadata.json``: everything a version says about itself, written last (see ``_store``).

A file of an older schema is an :class:`OlderLayoutError`: its units run again, never guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import CorruptRecordError, OlderLayoutError
from ._records import ConditionRecord, UnitState, _Reader, decode_json, dump_json

#: Bumped whenever the layout of a record changes; older records are rerun, never guessed at.
SCHEMA_VERSION = 3

VersionStatus = Literal["complete", "partial", "failed"]
_VERSION_STATUSES: tuple[VersionStatus, ...] = ("complete", "partial", "failed")


def _check_schema(r: _Reader) -> None:
    version = r.obj.get("schema_version")
    if type(version) is int and 0 < version < SCHEMA_VERSION:
        status = r.obj.get("status")
        raise OlderLayoutError(
            f"{r.path}: stored by an older layout of crystallize (schema {version}; this one "
            f"reads schema {SCHEMA_VERSION}), so it is not reused; a run stores it anew",
            path=r.path, key="schema_version",
            status=status if status in _VERSION_STATUSES else None)
    if version != SCHEMA_VERSION:
        r.fail("schema_version", f"written with schema {version!r}, this crystallize reads "
               f"schema {SCHEMA_VERSION}")


@dataclass(frozen=True)
class ConditionMeta:
    """What ``metadata.json`` keeps about one condition of the version: its units' record."""

    treatment: str
    executed_replicates: tuple[int, ...]
    record: ConditionRecord

    @property
    def state(self) -> UnitState:
        return self.record.state

    @property
    def complete(self) -> bool:
        return self.state == "complete"


@dataclass(frozen=True)
class VersionMetadata:
    """``vN/metadata.json``, written last: from then on the version is what it says.

    ``status`` is ``complete`` when every unit of every condition succeeded, ``partial`` when
    some failed (resume reruns those), ``failed`` when the experiment failed as a whole.
    """

    experiment: str
    version: int
    status: VersionStatus
    replicates: int
    conditions: Mapping[str, ConditionMeta]
    fingerprint: Mapping[str, Any]
    upstreams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = ()
    strategy: str = "rerun"
    reason: str = ""
    executor: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)
    host: str = ""
    pid: int = 0
    #: the graph run that wrote it (every version one ``run`` writes shares it)
    run: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def condition_state(self, condition: str) -> UnitState:
        """``complete``, ``failed`` (some unit failed) or ``never ran`` (not in this version)."""
        info = self.conditions.get(condition)
        return "never ran" if info is None else info.state

    def to_json(self) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The file's bytes, and the side files (path, bytes) its values need."""
        side: list[tuple[str, bytes]] = []
        data = dump_json({
            "schema_version": self.schema_version,
            "experiment": self.experiment,
            "version": self.version,
            "status": self.status,
            "replicates": self.replicates,
            "conditions": {c: {
                "treatment": i.treatment, "state": i.state, "complete": i.complete,
                "executed_replicates": list(i.executed_replicates),
                **i.record.to_obj(side),
            } for c, i in self.conditions.items()},
            "fingerprint": self.fingerprint,
            "upstreams": {p: dict(u) for p, u in self.upstreams.items()},
            "seeds": list(self.seeds),
            "strategy": self.strategy,
            "reason": self.reason,
            "executor": self.executor,
            "timings": dict(self.timings),
            "host": self.host,
            "pid": self.pid,
            "run": self.run,
        })
        return data, side

    @classmethod
    def from_json(cls, path: Path, data: bytes) -> VersionMetadata:
        try:
            obj = decode_json(data)
        except ValueError as exc:
            raise CorruptRecordError(f"{path}: not valid JSON ({exc})", path=path) from None
        r = _Reader(path, obj)
        _check_schema(r)
        conditions = {}
        for name in r.get("conditions", dict):
            c = r.sub("conditions").sub(name)
            conditions[name] = ConditionMeta(
                treatment=c.get("treatment", str),
                executed_replicates=c.ints("executed_replicates"),
                record=ConditionRecord.read(c, name),
            )
        if not conditions:
            r.fail("conditions", "expected at least the baseline condition, got none")
        timings = r.get("timings", dict, {})
        return cls(
            experiment=r.get("experiment", str), version=r.get("version", int),
            status=r.choice("status", _VERSION_STATUSES), replicates=r.count("replicates"),
            conditions=conditions, fingerprint=r.get("fingerprint", dict),
            upstreams=r.get("upstreams", dict, {}), seeds=r.ints("seeds"),
            strategy=r.get("strategy", str, "rerun"), reason=r.get("reason", str, ""),
            executor=r.get("executor", str, ""),
            timings={k: v for k, v in timings.items() if isinstance(v, (int, float))},
            host=r.get("host", str, ""), pid=r.get("pid", int, 0), run=r.get("run", str, ""),
        )
