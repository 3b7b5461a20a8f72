"""The per-unit context: configuration values that may be added but never overwritten."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..errors import ContextMutationError
from ..store import unstorable_leaf
from ._frozen import freeze

_MISSING = object()
#: Keys every unit sets itself; nothing else may set or replace them.
RESERVED_KEYS = ("condition", "replicate", "seed")


def reserved_key_message(key: str, where: str) -> str:
    return (
        f"{where}: context key {key!r} is reserved: every unit sets condition, replicate and "
        "seed itself. Store the value under another key (to choose the seeds, use "
        "SeedPlugin(seed=...))"
    )


def _storable_problem(value: Any, open_ids: set[int]) -> str | None:
    """Why a metric value cannot be stored in the run's record, or None.

    Only plain containers are walked; anything else (an array, an object) is stored whole.
    """
    if type(value) not in (list, tuple, dict, set, frozenset):
        return unstorable_leaf(value)
    if id(value) in open_ids:
        return "contains itself (a container that refers back to itself); record a copy"
    open_ids.add(id(value))
    try:
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    return (f"is a dict with a {type(key).__name__} key {key!r}; use string "
                            "keys, e.g. '|'.join(key)")
                problem = _storable_problem(item, open_ids)
                if problem:
                    return problem
            return None
        for item in value:
            problem = _storable_problem(item, open_ids)
            if problem:
                return problem
        return None
    finally:
        open_ids.discard(id(value))


class FrozenContext(Mapping[str, Any]):
    """An append-only mapping handed to datasources and steps.

    Each unit (one condition, one replicate) gets its own context holding ``condition``,
    ``replicate``, ``seed``, the experiment's ``initial_ctx`` and the condition's treatment
    values. Steps may add keys (``ctx["x"] = 1`` or :meth:`add`) but an existing key can never be
    replaced, so no step can silently change what a later step sees; values are read-only all
    the way down (or, for objects that cannot be made so, deep copies private to the unit), so
    no in-place change reaches another step, unit or the experiment's ``initial_ctx`` either.
    ``ctx.rng`` is a :class:`random.Random` seeded for the unit.

    Metrics are recorded with :meth:`record`; they end up in the unit's results.

    Only this class touches its fields; the engine goes through the underscored methods below
    (a unit's constructor, and context managers for a treatment overlay and read tracking).
    """

    __slots__ = ("_data", "_metrics", "_reads", "_overwrite_ok", "_treated", "_treated_reads",
                 "_rng")

    def __init__(self, initial: Mapping[str, Any] | None = None) -> None:
        # Values are frozen (or privately copied) on the way in: no step can change, in place,
        # what another step, unit or the experiment's initial_ctx sees.
        self._data: dict[str, Any] = {k: freeze(v) for k, v in (initial or {}).items()}
        self._metrics: dict[str, Any] = {}
        # Keys read while a cacheable step runs: the step cache keys on exactly these.
        self._reads: set[str] | None = None
        self._overwrite_ok = False
        # Keys the condition's treatment set, and those of them read so far.
        self._treated: set[str] = set()
        self._treated_reads: set[str] = set()
        self._rng: random.Random | None = None

    @classmethod
    def _for_unit(
        cls, initial: Mapping[str, Any], *, condition: str, replicate: int, seed: int
    ) -> FrozenContext:
        """The context of one unit, its reserved keys set (before any treatment, so that one
        trying to replace them fails loudly)."""
        ctx = cls(initial)
        ctx._data.update(condition=condition, replicate=replicate, seed=seed)
        return ctx

    @contextmanager
    def _treatment_overlay(self) -> Iterator[None]:
        """While open, keys may be replaced (a treatment overrides ``initial_ctx``), except the
        reserved ones; every key set is the treatment's (:attr:`treated_keys`)."""
        self._overwrite_ok = True
        try:
            yield
        finally:
            self._overwrite_ok = False

    @contextmanager
    def _tracking_reads(self) -> Iterator[set[str]]:
        """While open, the yielded set collects every key read."""
        reads: set[str] = set()
        self._reads = reads
        try:
            yield reads
        finally:
            self._reads = None

    def __getitem__(self, key: str) -> Any:
        try:
            value = self._data[key]
        except KeyError:
            known = ", ".join(sorted(self._data)) or "none"
            raise KeyError(f"context has no key {key!r} (keys: {known})") from None
        if self._reads is not None:
            self._reads.add(key)
        if key in self._treated:
            self._treated_reads.add(key)
        return value

    @property
    def treated_keys(self) -> frozenset[str]:
        """Keys set by the running condition's treatment: they win over explicit parameters."""
        return frozenset(self._treated)

    def _unread_treated_keys(self) -> list[str]:
        """Keys the treatment set that nothing has read yet."""
        return sorted(self._treated - self._treated_reads)

    @property
    def rng(self) -> random.Random:
        """A :class:`random.Random` seeded for this unit: the same draws on every executor."""
        if self._rng is None:
            self._rng = random.Random(self._data.get("seed", 0))
        return self._rng

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._data:
            return self[key]
        return default

    def __contains__(self, key: object) -> bool:
        if key in self._treated:
            self._treated_reads.add(key)
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setitem__(self, key: str, value: Any) -> None:
        if key in RESERVED_KEYS and key in self._data:
            raise ContextMutationError(reserved_key_message(key, "context"))
        if key in self._data and not self._overwrite_ok:
            raise ContextMutationError(
                f"context key {key!r} is already set to {self._data[key]!r}; keys can be added "
                "but not overwritten. Store the new value under a new key."
            )
        if self._overwrite_ok:
            self._treated.add(key)
        self._data[key] = freeze(value)

    def add(self, key: str, value: Any) -> None:
        """Add ``key``; raises :class:`ContextMutationError` if it already exists."""
        self[key] = value

    def record(self, name: str, value: Any) -> None:
        """Record metric ``name`` for this unit (a later value for the same name replaces it).

        :raises TypeError: if ``name`` is not a string, or ``value`` contains itself, a dict
            whose keys are not strings or numbers, or an object pickle refuses (the run could
            not be stored, or resume could not give it back exactly)
        """
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"metric names are non-empty strings, got {name!r} ({type(name).__name__}); "
                f"record it as ctx.record({str(name)!r}, value)"
            )
        problem = _storable_problem(value, set())
        if problem:
            raise TypeError(f"metric {name!r} cannot be stored: its value {problem}")
        self._metrics[name] = value

    @property
    def metrics(self) -> dict[str, Any]:
        """The metrics recorded so far in this unit."""
        return dict(self._metrics)

    def as_dict(self) -> dict[str, Any]:
        """A plain copy of the context's values (which counts as reading every one)."""
        self._treated_reads |= self._treated
        return dict(self._data)

    def __repr__(self) -> str:
        return f"FrozenContext({self._data!r})"
