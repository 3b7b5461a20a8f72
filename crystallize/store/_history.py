"""Stored runs as plain data, for ``crystallize metrics`` and ``crystallize report``.

Read through the typed records, so nothing here unpickles: a value only pickle could hold stays
a :class:`~crystallize.store.StoredValue` and counts as not a number. A version whose records
are corrupt is left out, as it is from resume.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CorruptRecordError
from ._metadata import VersionMetadata
from ._records import ConditionRecord
from ._store import ExperimentStore


@dataclass(frozen=True)
class StoredRun:
    """One stored version of an experiment: its metadata and each condition's record."""

    experiment: str
    number: int
    metadata: VersionMetadata
    #: condition -> its record
    conditions: dict[str, ConditionRecord] = field(default_factory=dict)

    @property
    def finished(self) -> float:
        return float(self.metadata.timings.get("finished", 0.0))

    def metric_names(self) -> list[str]:
        names: dict[str, None] = {}
        for record in self.conditions.values():
            names.update(dict.fromkeys(record.metrics()))
        return list(names)

    def values(self, condition: str, metric: str) -> list[float]:
        """The replicates' numeric values of ``metric`` (anything else is left out)."""
        record = self.conditions.get(condition)
        raw = record.metrics().get(metric, []) if record is not None else []
        return [float(v) for v in raw if isinstance(v, numbers.Real) and not isinstance(v, bool)]

    def units(self) -> list[dict[str, Any]]:
        """Each unit this version executed: condition, replicate, worker, start, end, attempts."""
        found = []
        for condition, record in self.conditions.items():
            executed = self.metadata.conditions[condition].executed_replicates
            for unit in record.units:
                if unit.replicate not in executed or unit.timing is None:
                    continue  # reused from an earlier run: it is on that run's timeline
                found.append({
                    "experiment": self.experiment, "condition": condition,
                    "replicate": unit.replicate, "worker": unit.timing.worker,
                    "started": unit.timing.started, "finished": unit.timing.finished,
                    "attempts": unit.timing.attempts, "failed": unit.state == "failed",
                })
        return found


def experiment_runs(root: Path, experiment: str) -> list[StoredRun]:
    """Every readable version of ``experiment`` under store ``root``, oldest first (a version
    still being written, or abandoned, has no ``metadata.json`` yet)."""
    store = ExperimentStore(root, experiment)
    runs = []
    for number in sorted(store.version_numbers()):
        try:
            stored = store.read(number)
        except CorruptRecordError:
            continue
        if stored is None:
            continue
        conditions = {c: stored.condition_record(c) for c in stored.metadata.conditions}
        runs.append(StoredRun(experiment, number, stored.metadata, conditions))
    return runs


def stored_runs(roots: Mapping[str, Path]) -> dict[str, list[StoredRun]]:
    """:func:`experiment_runs` of each experiment, given as ``{name: store root}``."""
    return {name: experiment_runs(root, name) for name, root in roots.items()}


def last_run(runs: Iterable[StoredRun]) -> list[StoredRun]:
    """The versions written by the most recent run of the graph (one ``crystallize run``).

    That run's versions share its run id; experiments it resumed wrote no version, so they are
    absent.
    """
    everything = list(runs)
    if not everything:
        return []
    newest = max(everything, key=lambda r: r.finished)
    if not newest.metadata.run:
        return [newest]
    return [r for r in everything if r.metadata.run == newest.metadata.run]


@dataclass(frozen=True)
class MetricSummary:
    """A metric's replicates in one condition of one version."""

    values: list[float]

    @property
    def mean(self) -> float | None:
        from statistics import fmean  # on first use: most runs compute no statistics

        return fmean(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        from statistics import stdev

        return stdev(self.values) if len(self.values) > 1 else None

    def describe(self) -> str:
        if self.mean is None:
            return "-"
        if self.sd is None:
            return f"{self.mean:.4g}"
        return f"{self.mean:.4g} ± {self.sd:.2g}"


@dataclass(frozen=True)
class MetricRow:
    """One metric of one condition of one experiment, across its stored versions."""

    experiment: str
    condition: str
    metric: str
    #: version number -> summary (versions without this metric are absent)
    versions: dict[int, MetricSummary]


def metric_rows(runs: Mapping[str, list[StoredRun]]) -> list[MetricRow]:
    """Every (experiment, condition, metric) with its summary in each stored version."""
    rows = []
    for name, versions in runs.items():
        keys: dict[tuple[str, str], None] = {}
        for run in versions:
            for condition, record in run.conditions.items():
                keys.update(dict.fromkeys((condition, m) for m in record.metrics()))
        for condition, metric in keys:
            rows.append(MetricRow(name, condition, metric, {
                run.number: MetricSummary(run.values(condition, metric)) for run in versions
                if condition in run.conditions and metric in run.conditions[condition].metrics()
            }))
    return rows
