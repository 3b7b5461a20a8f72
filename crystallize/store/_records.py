"""The store's typed records, and the value codec that writes them without running code on read.

One file holds them all, ``vN/metadata.json`` (``_metadata.VersionMetadata``, with a
``schema_version``): for each condition a :class:`ConditionRecord`, column-wise, with one
:class:`UnitRecord` per replicate, written and read only by the store. A unit is
``complete``, ``failed`` or ``never ran``; a condition or a version with a failed unit is not
complete, and nobody has to infer that from a missing key.

Reading a record never unpickles. Values JSON holds stay JSON; tuples, sets, bytes, dicts with
keys other than strings, and numpy scalars are tagged JSON; numpy arrays are ``.npy`` files
(read with ``allow_pickle=False``); anything else is pickled into a side file. Side files are
only :class:`StoredValue` placeholders until :meth:`ConditionRecord.with_values` loads them,
which happens only where a run or a ``Result`` needs the values, never for ``status``,
``clean`` or resume checks. Every structural problem in a record is a
:class:`CorruptRecordError` naming the file and key; so is a file path that leaves ``vN/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import CorruptRecordError, UnstorableValueError
from ._names import value_file
from ._reads import Reads, reads_of

UnitState = Literal["complete", "failed", "never ran"]
_UNIT_STATES: tuple[UnitState, ...] = ("complete", "failed", "never ran")

#: Key of a tagged JSON object (a value JSON has no type for).
TAG = "__crystallize__"
_TAG_BYTES = TAG.encode()


def content_hash(data: bytes) -> str:
    """The store's content hash of ``data`` (BLAKE2b, 128 bits, hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def modified_ns(path: Path) -> int | None:
    """The file's modification time in ns; None if it is gone."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def file_hash(path: str) -> str:
    """:func:`content_hash` of the file at ``path``, read a piece at a time."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        while piece := file.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileRecord:
    """A file of a version: its path relative to ``vN/``, size in bytes and content hash."""

    path: str
    size: int
    blake2b: str

    def __post_init__(self) -> None:
        # Records are read from disk: a path that leaves the version must not be followed.
        # (PurePosixPath's parts, without its cost: this runs for every file of every unit.)
        parts = [p for p in self.path.split("/") if p not in ("", ".")]
        if not parts or self.path.startswith("/") or ".." in parts or "\0" in self.path:
            raise ValueError(f"file path {self.path!r} is not inside the version")

    @classmethod
    def of(cls, path: str, data: bytes) -> FileRecord:
        return cls(path, len(data), content_hash(data))

    def problem(self, version_dir: Path, recorded_ns: int | None = None) -> str | None:
        """Why the file under ``version_dir`` is not the one recorded (missing, other size, or
        modified after ``recorded_ns``, when its record was written, into other content)."""
        path = os.path.join(version_dir, self.path)
        try:
            stat = os.stat(path)
        except OSError:
            return f"{self.path} is missing"
        if stat.st_size != self.size:
            return f"{self.path} has {stat.st_size} bytes, {self.size} were written"
        # Hashing every file on every resume would cost as much as the run; a file touched
        # since its record was written is hashed, so an edit that keeps the size is caught.
        if recorded_ns is not None and stat.st_mtime_ns > recorded_ns:
            try:
                changed = file_hash(path) != self.blake2b
            except OSError as exc:
                return f"{self.path} cannot be read ({exc.strerror})"
            if changed:
                return f"{self.path} was edited after it was stored"
        return None


@dataclass(frozen=True)
class StoredValue:
    """A metric value kept in a side file (``npy`` or ``pickle``), not loaded yet."""

    kind: Literal["npy", "pickle"]
    file: FileRecord


# -- the value codec --------------------------------------------------------------------------
def _numpy() -> Any:
    # Only a value that came from numpy can need it, and then the step code imported it.
    return sys.modules.get("numpy")


def _is_array(value: Any) -> bool:
    np = _numpy()
    return np is not None and type(value) is np.ndarray and not value.dtype.hasobject


def _is_numpy_scalar(value: Any) -> bool:
    np = _numpy()
    return np is not None and isinstance(value, np.generic) and value.dtype.kind in "biuf"


def unstorable_leaf(value: Any) -> str | None:
    """Why the store could not give ``value`` back exactly, or None; containers are the
    caller's to walk (only ``list``, ``tuple``, ``dict``, ``set`` and ``frozenset`` themselves
    are stored item by item, anything else whole)."""
    if value is None or type(value) in (bool, int, float, str, bytes):
        return None
    if _is_array(value) or _is_numpy_scalar(value):
        return None
    try:
        pickle.dumps(value)
    except Exception as exc:
        return (f"is a {type(value).__name__}, which is not JSON, not a numpy array, and "
                f"pickle refuses it ({exc}); record numbers, strings, containers of them, "
                "arrays, or objects of importable classes")
    return None


class Encoder:
    """Turns one unit's values into JSON, collecting the side files they need in ``side``.

    The files are numbered in the order the values come, so a unit encoded twice (in the
    journal, then in the version's records) names the same value's file the same both times.
    """

    def __init__(self, condition: str, replicate: int, side: list[tuple[str, bytes]]) -> None:
        self.condition, self.replicate = condition, replicate
        self.count = 0
        self.side = side

    def _side(self, kind: Literal["npy", "pickle"], data: bytes) -> dict[str, Any]:
        path = value_file(self.condition, self.replicate, self.count,
                          "npy" if kind == "npy" else "pkl")
        self.count += 1
        self.side.append((path, data))
        return {TAG: kind, "path": path, "size": len(data), "blake2b": content_hash(data)}

    def encode(self, value: Any) -> Any:
        kind = type(value)
        if value is None or kind in (bool, int, str):
            return value
        if kind is float:
            # JSON has no NaN or infinity: Python's json writes them, but other readers choke.
            return value if math.isfinite(value) else {TAG: "float", "value": repr(value)}
        if kind is list:
            return [self.encode(v) for v in value]
        if kind in (tuple, set, frozenset):
            return {TAG: kind.__name__, "items": [self.encode(v) for v in value]}
        if kind is dict:
            if all(type(k) is str for k in value) and TAG not in value:
                return {k: self.encode(v) for k, v in value.items()}
            return {TAG: "dict", "items": [[self.encode(k), self.encode(v)]
                                           for k, v in value.items()]}
        if kind is bytes:
            return {TAG: "bytes", "hex": value.hex()}
        if _is_numpy_scalar(value):
            return {TAG: "numpy", "dtype": str(value.dtype), "value": self.encode(value.item())}
        if _is_array(value):
            buffer = io.BytesIO()
            _numpy().save(buffer, value, allow_pickle=False)
            return self._side("npy", buffer.getvalue())
        try:
            return self._side("pickle", pickle.dumps(value))
        except Exception as exc:
            raise UnstorableValueError(
                f"a {type(value).__name__} cannot be stored: {exc}") from None


def _tagged(obj: dict[str, Any]) -> Any:
    """``json.loads`` object hook: rebuild tagged values; side files become placeholders."""
    tag = obj.get(TAG)
    if tag is None:
        return obj
    if tag in ("tuple", "set", "frozenset"):
        items = obj["items"]
        return tuple(items) if tag == "tuple" else set(items) if tag == "set" else frozenset(items)
    if tag == "dict":
        return {_hashable(k): v for k, v in obj["items"]}
    if tag == "bytes":
        return bytes.fromhex(obj["hex"])
    if tag == "float":
        return float(obj["value"])
    if tag == "numpy":
        np = _numpy() or _import_numpy()
        return np.dtype(obj["dtype"]).type(obj["value"])
    if tag in ("npy", "pickle"):
        return StoredValue(tag, FileRecord(obj["path"], int(obj["size"]), str(obj["blake2b"])))
    raise ValueError(f"unknown tag {tag!r}")


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict, set)):
        raise ValueError(f"dictionary key {key!r} is not hashable")
    return key


def _import_numpy() -> Any:
    import numpy  # a numpy scalar was stored, so numpy was installed when it was written

    return numpy


def decode_json(data: bytes) -> Any:
    """Parse a record's JSON, rebuilding tagged values; raises ValueError on anything odd."""
    if b"\0" not in data[:4] and _TAG_BYTES not in data and b"\\u" not in data:
        # UTF-8 (json reads UTF-16 and 32 too) without a tag, not even spelt with escapes: the
        # hook would change nothing, and calling it for every object doubles the parsing time.
        return json.loads(data)
    try:
        return json.loads(data, object_hook=_tagged)
    except (KeyError, TypeError, AttributeError, ImportError) as exc:
        raise ValueError(f"malformed tagged value ({type(exc).__name__}: {exc})") from None


def dump_json(obj: Any) -> bytes:
    # No indent: only then does json use its C encoder, several times faster on metadata.
    return json.dumps(obj, allow_nan=False).encode()


def load_value(value: Any, version_dir: Path) -> Any:
    """``value`` with every :class:`StoredValue` in it read from its side file.

    This is the only place a stored pickle is ever loaded; its hash is checked first, so a file
    swapped after the run is refused rather than run.
    """
    if isinstance(value, StoredValue):
        data = (version_dir / value.file.path).read_bytes()
        if content_hash(data) != value.file.blake2b:
            raise CorruptRecordError(
                f"{version_dir / value.file.path}: content differs from what the run wrote; "
                "rerun the experiment"
            )
        if value.kind == "npy":
            return _import_numpy().load(io.BytesIO(data), allow_pickle=False)
        return pickle.loads(data)
    kind = type(value)
    if kind is list:
        return [load_value(v, version_dir) for v in value]
    if kind in (tuple, set, frozenset):
        return kind(load_value(v, version_dir) for v in value)
    if kind is dict:
        return {k: load_value(v, version_dir) for k, v in value.items()}
    return value


# -- validation helpers -----------------------------------------------------------------------
class _Reader:
    """Typed access to one parsed JSON object, raising :class:`CorruptRecordError` by key."""

    def __init__(self, path: Path, obj: Any, where: str = "") -> None:
        self.path, self.where = path, where
        if not isinstance(obj, dict):
            self.fail(where or "top level", f"expected a JSON object, got {_kind(obj)}")
        self.obj: dict[str, Any] = obj

    def fail(self, key: str, message: str) -> Any:
        raise CorruptRecordError(f"{self.path}: key {key!r}: {message}", path=self.path, key=key)

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where and name else self.where or name

    def get(self, name: str, expected: type | tuple[type, ...], default: Any = ...) -> Any:
        if name not in self.obj:
            if default is not ...:
                return default
            return self.fail(self.key(name), "missing")
        value = self.obj[name]
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
            names = expected.__name__ if isinstance(expected, type) else " or ".join(
                t.__name__ for t in expected)
            return self.fail(self.key(name), f"expected {names}, got {_kind(value)}")
        return value

    def count(self, name: str) -> int:
        value: int = self.get(name, int)
        if value < 1:
            self.fail(self.key(name), f"expected a whole number >= 1, got {value}")
        return value

    def sub(self, name: str) -> _Reader:
        return _Reader(self.path, self.get(name, dict), self.key(name))

    def choice(self, name: str, options: tuple[str, ...]) -> Any:
        value = self.get(name, str)
        if value not in options:
            self.fail(self.key(name), f"expected one of {list(options)}, got {value!r}")
        return value

    def ints(self, name: str) -> tuple[int, ...]:
        values = self.get(name, list)
        if not all(type(v) is int for v in values):
            self.fail(self.key(name), "expected a list of whole numbers")
        return tuple(values)

    def strings(self, name: str) -> dict[str, str]:
        values = self.get(name, dict)
        if not all(isinstance(v, str) for v in values.values()):
            self.fail(self.key(name), "expected a mapping of names to strings")
        return dict(values)

    def file(self, name: str) -> FileRecord:
        sub = self.sub(name) if name else self
        try:
            return FileRecord(sub.get("path", str), sub.get("size", int), sub.get("blake2b", str))
        except ValueError as exc:
            return self.fail(self.key(name), str(exc))


# A resume reads every unit of every version it reuses: these take well-formed entries as they
# are; for anything else they return None, and _Reader checks it key by key and says what is wrong.
def _file_record(entry: Any) -> FileRecord | None:
    if type(entry) is dict:
        path, size, digest = entry.get("path"), entry.get("size"), entry.get("blake2b")
        if type(path) is str and type(size) is int and type(digest) is str:
            try:
                return FileRecord(path, size, digest)
            except ValueError:
                return None
    return None


def _unit_timing(entry: Any) -> UnitTiming | None:
    if type(entry) is dict:
        worker, attempts, retried = entry.get("worker"), entry.get("attempts"), entry.get("retried")
        started: Any = entry.get("started")
        finished: Any = entry.get("finished")
        if (type(worker) is str and type(started) in (int, float)
                and type(finished) in (int, float) and type(attempts) is int and attempts >= 1
                and type(retried) is list and all(type(e) is str for e in retried)):
            return UnitTiming(worker, float(started), float(finished), attempts, tuple(retried))
    return None


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _file_json(record: FileRecord) -> dict[str, Any]:
    return {"path": record.path, "size": record.size, "blake2b": record.blake2b}


# -- unit and condition records ---------------------------------------------------------------
@dataclass(frozen=True)
class UnitTiming:
    """Where and when a unit ran (for ``crystallize report``), and how many attempts it took."""

    #: ``host:pid:thread`` of the worker that ran it
    worker: str
    started: float
    finished: float
    attempts: int = 1
    #: the errors of the attempts that failed before the last, as ``Type: message``
    retried: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"worker": self.worker, "started": self.started, "finished": self.finished,
                "attempts": self.attempts, "retried": list(self.retried)}

    @classmethod
    def read(cls, r: _Reader) -> UnitTiming:
        retried = r.get("retried", list)
        if not all(isinstance(e, str) for e in retried):
            r.fail(r.key("retried"), "expected a list of strings")
        return cls(r.get("worker", str), float(r.get("started", (int, float))),
                   float(r.get("finished", (int, float))), r.count("attempts"), tuple(retried))


@dataclass(frozen=True)
class UnitRecord:
    """One replicate of a condition as stored."""

    replicate: int
    state: UnitState
    seed: int | None = None
    #: metric name -> value (a :class:`StoredValue` until :func:`load_values`)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    artifacts: Mapping[str, FileRecord] = field(default_factory=dict)
    error: str | None = None
    #: for a unit this version executed (a reused one keeps the run's that computed it)
    timing: UnitTiming | None = None
    #: the failed unit's traceback, as the worker formatted it
    traceback: str | None = None
    #: the upstream artifacts it read, by content (None where not recorded: never reused)
    reads: Reads | None = None

    def side_files(self) -> list[FileRecord]:
        """The side files its values live in."""
        found: list[FileRecord] = []

        def walk(value: Any) -> None:
            if isinstance(value, StoredValue):
                found.append(value.file)
            elif isinstance(value, (list, tuple, set, frozenset)):
                for v in value:
                    walk(v)
            elif isinstance(value, dict):
                for v in value.values():
                    walk(v)

        for value in self.metrics.values():
            walk(value)
        return found


@dataclass(frozen=True)
class ConditionRecord:
    """A condition's units as stored: one :class:`UnitRecord` per replicate, in order, and
    what a reader of its numbers must know (``warnings``: a fallback, a treatment key unread)."""

    condition: str
    units: tuple[UnitRecord, ...]
    warnings: tuple[str, ...] = ()

    @property
    def replicates(self) -> int:
        return len(self.units)

    @property
    def state(self) -> UnitState:
        """``complete`` if every unit is, ``never ran`` if none ran, else ``failed``."""
        states = {u.state for u in self.units}
        if states == {"complete"}:
            return "complete"
        return "never ran" if states <= {"never ran"} else "failed"

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> value per replicate (None where that replicate has none)."""
        names = list(dict.fromkeys(n for u in self.units for n in u.metrics))
        return {n: [u.metrics.get(n) for u in self.units] for n in names}

    def artifact_paths(self) -> dict[str, list[str | None]]:
        """Artifact file name -> path relative to ``vN/`` per replicate (None where missing)."""
        names = list(dict.fromkeys(n for u in self.units for n in u.artifacts))
        return {n: [(u.artifacts[n].path if n in u.artifacts else None) for u in self.units]
                for n in names}

    def errors(self) -> dict[int, str]:
        return {u.replicate: u.error for u in self.units if u.error is not None}

    def to_obj(self, side: list[tuple[str, bytes]]) -> dict[str, Any]:
        """The record as JSON; the side files its values need are appended to ``side``."""
        encoded = []
        for u in self.units:
            encoder = Encoder(self.condition, u.replicate, side)
            encoded.append({n: encoder.encode(v) for n, v in u.metrics.items()})
        names = list(dict.fromkeys(n for values in encoded for n in values))
        artifacts = list(dict.fromkeys(n for u in self.units for n in u.artifacts))
        # Column-wise, so that a person or a script reads ``metrics[name][replicate]``.
        return {
            "replicates": self.replicates,
            "states": [u.state for u in self.units],
            "seeds": [u.seed for u in self.units],
            "metrics": {n: [values.get(n) for values in encoded] for n in names},
            "recorded": {n: [n in values for values in encoded] for n in names},
            "artifacts": {n: [(u.artifacts[n].path if n in u.artifacts else None)
                              for u in self.units] for n in artifacts},
            "files": {n: [(_file_json(u.artifacts[n]) if n in u.artifacts else None)
                          for u in self.units] for n in artifacts},
            "errors": {str(u.replicate): u.error for u in self.units if u.error is not None},
            "timings": [None if u.timing is None else u.timing.to_json() for u in self.units],
            "tracebacks": {str(u.replicate): u.traceback for u in self.units
                           if u.traceback is not None},
            "warnings": list(self.warnings),
            "reads": [u.reads for u in self.units],
        }

    @classmethod
    def read(cls, r: _Reader, condition: str) -> ConditionRecord:
        """The record of ``condition`` that ``r`` reads (see :meth:`to_obj`)."""
        path = r.path
        n = r.count("replicates")
        states, seeds = r.get("states", list), r.get("seeds", list)
        metrics, recorded = r.sub("metrics"), r.sub("recorded")
        files, errors = r.sub("files"), r.strings("errors")
        timings, tracebacks = r.get("timings", list), r.strings("tracebacks")
        warnings = r.get("warnings", list)
        if not all(isinstance(w, str) for w in warnings):
            r.fail(r.key("warnings"), "expected a list of strings")
        reads = r.get("reads", list)
        for key, column in (("states", states), ("seeds", seeds), ("timings", timings),
                            ("reads", reads)):
            if len(column) != n:
                r.fail(r.key(key), f"expected {n} entries (one per replicate), got {len(column)}")
        if any(s not in _UNIT_STATES for s in states):
            r.fail(r.key("states"), f"expected entries from {list(_UNIT_STATES)}, got {states}")
        # Each column is checked once, then cut into the replicates' units.
        values_of: dict[str, tuple[list[Any], list[Any]]] = {}
        for name in metrics.obj:
            column, flags = metrics.get(name, list), recorded.get(name, list)
            if len(column) != n or len(flags) != n:
                r.fail(r.key(f"metrics.{name}"), f"expected {n} entries (one per replicate)")
            values_of[name] = column, flags
        files_of: dict[str, list[FileRecord | None]] = {}
        for name in files.obj:
            column = files.get(name, list)
            if len(column) != n:
                r.fail(r.key(f"files.{name}"), f"expected {n} entries (one per replicate)")
            files_of[name] = [
                None if entry is None else _file_record(entry) or _Reader(
                    path, entry, r.key(f"files.{name}[{rep}]")).file("")
                for rep, entry in enumerate(column)]
        units = []
        for rep in range(n):
            values = {name: column[rep] for name, (column, flags) in values_of.items()
                      if flags[rep]}
            arts = {name: file for name, column in files_of.items()
                    if (file := column[rep]) is not None}
            timing = None if timings[rep] is None else _unit_timing(timings[rep]) or (
                UnitTiming.read(_Reader(path, timings[rep], r.key(f"timings[{rep}]"))))
            units.append(UnitRecord(rep, states[rep], seeds[rep], values, arts,
                                    errors.get(str(rep)), timing, tracebacks.get(str(rep)),
                                    reads_of(r, r.key(f"reads[{rep}]"), reads[rep])))
        return cls(condition, tuple(units), tuple(warnings))

    def side_files(self) -> list[FileRecord]:
        """The side files its values live in."""
        return [file for unit in self.units for file in unit.side_files()]

    def with_values(self, version_dir: Path) -> ConditionRecord:
        """This record with its side-file values loaded (see :func:`load_value`)."""
        if not self.side_files():  # the usual case: every value was JSON, nothing to load
            return self
        units = tuple(
            replace(u, metrics={n: load_value(v, version_dir) for n, v in u.metrics.items()})
            for u in self.units
        )
        return replace(self, units=units)
