"""Resume decisions: which units of an experiment a stored run can serve, and why not.

The unit (condition x replicate) is what reruns. A stored unit is reused while everything it
depended on is unchanged, checked from the outside in:

- the experiment level (pipeline steps with their normalised code and parameters, datasource,
  outputs, initial context, master seed, from which each replicate's seed derives): a change
  here reruns every unit;
- the condition level (the treatment's payload): a new or changed treatment reruns its units;
- the unit level: the content hash of each upstream artifact it actually read (recorded when
  it ran) compared with what it would read now. A producer that reran and wrote identical
  bytes leaves its consumers reused (early cutoff); one going from 4 to 5 replicates changes
  only the consumer replicates whose ``i % n`` source changed.

Units come from the version a resume starts from (complete or partial) and, for what it cannot
serve, from the journals of newer interrupted runs. Every unit gets a reason; a dry run,
``status`` and a real run all plan through :func:`plan_run`.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fingerprint import code_fingerprint, code_fingerprint_parts, combine, value_fingerprint
from ..model import BASELINE
from ..store import ConditionRecord, Journal, StoredVersion, UnitRecord
from ._unit import UpstreamView

if TYPE_CHECKING:
    from ..experiment import Experiment

#: The hash of an artifact a planned run has yet to write (a dry run's upstream that reruns).
PENDING = "pending"


def _safe(fn: Any, *args: Any) -> str:
    """A fingerprint, or a never-matching token naming why the value cannot be fingerprinted."""
    try:
        return fn(*args)
    except (TypeError, ValueError, OSError) as exc:
        return f"unfingerprintable-{uuid.uuid4().hex}: {exc}"


def experiment_fingerprint(exp: Experiment) -> dict[str, Any]:
    """The experiment-level parts, as stored in ``metadata.json``."""
    steps: list[dict[str, Any]] = []
    for step in exp.pipeline.steps:
        helpers = _safe(code_fingerprint_parts, step.fn)
        steps.append({
            "name": step.name,
            "code": _safe(code_fingerprint, step.fn),
            "params": _safe(step.params_fingerprint),
            "functions": helpers if isinstance(helpers, dict) else {},
        })
    outputs = {
        alias: [art.name, _safe(code_fingerprint, art.writer) if art.writer else ""]
        for alias, art in sorted(exp.outputs.items())
    }
    parts: dict[str, Any] = {
        "steps": steps,
        "datasource": _safe(lambda e: e.datasource.fingerprint(), exp),
        "outputs": _safe(value_fingerprint, outputs),
        "initial_ctx": _safe(value_fingerprint, exp.initial_ctx),
        "seed": value_fingerprint(exp.seed_plugin.master_seed(exp.name or "")),
    }
    parts["pipeline"] = combine(*(combine(s["name"], s["code"], s["params"]) for s in steps))
    return parts


def treatment_fingerprint(exp: Experiment, condition: str) -> str:
    treatment = exp.treatment_map.get(condition)
    return _safe(treatment.fingerprint) if treatment is not None else "none"


def _pipeline_change(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str:
    old_names, new_names = [s["name"] for s in old], [s["name"] for s in new]
    if old_names != new_names:
        return f"pipeline steps changed: {old_names} -> {new_names}"
    for before, after in zip(old, new, strict=True):
        if before["code"] != after["code"]:
            changed = [
                fn for fn, fp in after.get("functions", {}).items()
                if before.get("functions", {}).get(fn) != fp
            ]
            detail = f" ({', '.join(changed)})" if changed else ""
            return f"code of step {after['name']} changed{detail}"
        if before["params"] != after["params"]:
            return f"parameters of step {after['name']} changed"
    return "pipeline changed"


def experiment_change(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why the stored experiment-level fingerprint no longer matches, or None if it does."""
    if stored.get("pipeline") != current["pipeline"]:
        try:
            return _pipeline_change(stored.get("steps", []), current["steps"])
        except (AttributeError, TypeError, KeyError):  # a hand-edited fingerprint
            return "pipeline changed"
    for part, label in (
        ("datasource", "datasource changed"),
        ("outputs", "outputs changed"),
        ("initial_ctx", "initial_ctx changed"),
        ("seed", "seed changed"),
    ):
        if stored.get(part) != current[part]:
            return label
    return None


class Source:
    """A stored version whose finished units may be reused: the version a resume starts from
    (complete or partial), or a newer interrupted run, read from its journal."""

    def __init__(self, number: int, path: Path, *, fingerprint: Mapping[str, Any],
                 treatments: Mapping[str, Any], upstreams: Mapping[str, Any],
                 stored: StoredVersion | None = None, journal: Journal | None = None) -> None:
        self.number = number
        self.path = path
        self.fingerprint = fingerprint
        self.treatments = treatments
        self.upstreams = upstreams
        self.stored = stored
        self.journal = journal
        self.label = f"v{number}" if stored is not None else f"interrupted v{number}"

    @classmethod
    def of_version(cls, stored: StoredVersion) -> Source:
        meta = stored.metadata
        return cls(stored.number, stored.path, fingerprint=meta.fingerprint,
                   treatments={c: i.treatment for c, i in meta.conditions.items()},
                   upstreams={p: _dict(u).get("version") for p, u in meta.upstreams.items()},
                   stored=stored)

    @classmethod
    def of_journal(cls, journal: Journal) -> Source:
        header = journal.header
        return cls(journal.number, journal.path, fingerprint=_dict(header.get("fingerprint")),
                   treatments=_dict(header.get("treatments")),
                   upstreams=_dict(header.get("upstreams")), journal=journal)

    @functools.cached_property
    def recorded_ns(self) -> int | None:
        """When this source's record was written: a file of it modified later gets hashed."""
        held = self.stored if self.stored is not None else self.journal
        return held.recorded_ns() if held is not None else None

    def record(self, condition: str) -> ConditionRecord:
        """The condition's stored record (only for a version)."""
        assert self.stored is not None
        return self.stored.condition_record(condition)

    def unit(self, condition: str, replicate: int) -> UnitRecord | str | None:
        """The finished unit, or why there is none (None: a journal without it, which says
        nothing about the unit)."""
        if self.journal is not None:
            return self.journal.units.get(condition, {}).get(replicate)
        record = self.record(condition)
        if replicate >= record.replicates:
            return "new replicate"
        unit = record.units[replicate]
        if unit.state != "complete":
            return f"{unit.state} in {self.label}"
        if unit.reads is None:
            return f"{self.label} did not record what it read"
        return unit


def _dict(obj: Any) -> dict[str, Any]:
    """``obj`` if it is a dict, else empty: a garbled header means "rerun", not a crash."""
    return obj if isinstance(obj, dict) else {}


def _upstream_change(unit: UnitRecord, condition: str, replicate: int,
                     upstreams: Mapping[str, UpstreamView]) -> str | None:
    for producer, reads in (unit.reads or {}).items():
        view = upstreams.get(producer)
        if view is None:
            return f"upstream {producer} has no complete run"
        for name, read in reads.items():
            now = view.content_hash(condition, name, replicate)
            if now == PENDING:
                return f"upstream {producer} reruns what it read ({name})"
            if now is None or now != read:
                return f"upstream {producer} produced new artifacts ({name})"
    return None


def _check(source: Source, treatment: str, condition: str, replicate: int,
           upstreams: Mapping[str, UpstreamView]) -> UnitRecord | str | None:
    """The unit ``source`` can serve, or why it cannot (None: see :meth:`Source.unit`)."""
    stored_treatment = source.treatments.get(condition)
    if stored_treatment is None:
        return "new treatment" if condition != BASELINE else "baseline never ran"
    if stored_treatment != treatment:
        return "treatment changed"
    unit = source.unit(condition, replicate)
    if not isinstance(unit, UnitRecord):
        return unit
    change = _upstream_change(unit, condition, replicate, upstreams)
    if change is not None:
        return change
    files = [*unit.artifacts.values(), *unit.side_files()]
    problems = [p for f in files if (p := f.problem(source.path, source.recorded_ns)) is not None]
    if problems:
        return f"artifact file(s) missing or changed: {problems[:3]}"
    return unit


Unit = tuple[str, int]


@dataclass
class Plan:
    """What to do for one experiment: which units to execute, which to reuse, and why."""

    replicates: int
    #: condition -> replicate indices to execute
    execute: dict[str, list[int]] = field(default_factory=dict)
    #: the units reused, each with the version it comes from
    reuse: dict[Unit, tuple[Source, UnitRecord]] = field(default_factory=dict)
    #: every unit's reason, in order
    why: dict[Unit, str] = field(default_factory=dict)
    #: the version a resume starts from (what a full reuse loads)
    source: Source | None = None
    #: why newer versions were passed over, and whether an upstream reran to no effect
    notes: list[str] = field(default_factory=list)

    @property
    def fully_reused(self) -> bool:
        return not self.execute and self.source is not None and all(
            s is self.source for s, _ in self.reuse.values())

    @property
    def units(self) -> int:
        return sum(len(r) for r in self.execute.values())

    @property
    def uniform(self) -> bool:
        """Whether every unit has the same reason (then the experiment's reason says it all)."""
        return len(set(self.why.values())) <= 1

    @property
    def unit_reasons(self) -> dict[str, str]:
        return {f"{c}_rep_{r}": why for (c, r), why in self.why.items()}

    @functools.cached_property
    def reason(self) -> str:
        # Cached: a plan is final when plan_run returns it, and its reason goes to the decision
        # event, the started or resumed event and the result.
        groups: dict[str, list[Unit]] = {}
        for unit, why in self.why.items():
            groups.setdefault(why, []).append(unit)
        notes = "".join(f"{n}; " for n in self.notes)
        if self.fully_reused and len(groups) == 1:
            assert self.source is not None
            return f"{notes}reusing {self.source.label}: nothing it read changed" if notes \
                else f"reusing {self.source.label}: nothing changed"
        if len(groups) == 1:
            return notes + next(iter(groups))
        ran = [(why, units) for why, units in groups.items() if units[0] not in self.reuse]
        kept = [(why, units) for why, units in groups.items() if units[0] in self.reuse]
        parts = [f"{self._describe(units)}: {why}" for why, units in ran]
        parts += [f"{len(units)} {why}" for why, units in kept]
        return f"{notes}{self.units} of {len(self.why)} unit(s) run: " + "; ".join(parts)

    def _describe(self, units: list[Unit]) -> str:
        """``baseline`` for all of a condition's units, else ``baseline rep 0, 3-5``."""
        by_condition: dict[str, list[int]] = {}
        for condition, replicate in units:
            by_condition.setdefault(condition, []).append(replicate)
        parts = []
        for condition, reps in by_condition.items():
            if len(reps) == self.replicates:
                parts.append(condition)
                continue
            spans: list[list[int]] = []
            for r in sorted(reps):
                if spans and spans[-1][1] == r - 1:
                    spans[-1][1] = r
                else:
                    spans.append([r, r])
            parts.append(f"{condition} rep " + ", ".join(
                str(a) if a == b else f"{a}-{b}" for a, b in spans))
        return ", ".join(parts)

    def warnings(self, condition: str) -> list[str]:
        """The warnings of the stored records, or of the journaled units, that ``condition``'s
        reused units come from."""
        found: dict[str, None] = {}
        for (c, r), (source, _) in self.reuse.items():
            if c != condition:
                continue
            if source.journal is not None:  # a journal keeps each unit's own
                found.update(dict.fromkeys(source.journal.warnings.get(c, {}).get(r, ())))
            elif source.stored is not None:
                found.update(dict.fromkeys(source.record(c).warnings))
        return list(found)

    def _run(self, unit: Unit, why: str) -> None:
        self.execute.setdefault(unit[0], []).append(unit[1])
        self.why[unit] = why


def plan_run(
    exp: Experiment,
    *,
    strategy: str,
    fingerprint: dict[str, Any],
    stored: StoredVersion | None,
    interrupted: Callable[[], list[Journal]],
    upstreams: Mapping[str, UpstreamView],
    notes: Sequence[str] = (),
) -> Plan:
    """Decide, unit by unit, what to execute and what to reuse.

    ``stored`` is the version a resume starts from; ``interrupted()`` the journals of newer
    runs that were never published, newest first (asked for only when some unit is still to
    run). ``upstreams`` are the runs the units would read now. ``notes`` say why newer
    versions than ``stored`` were passed over (they lead the reason).
    """
    plan = Plan(exp.replicates)
    wanted = [(c, r) for c in exp.conditions for r in range(exp.replicates)]
    if strategy != "resume":
        for unit in wanted:
            plan._run(unit, "strategy is rerun")
        return plan
    plan.notes = list(notes)
    treatments = {c: treatment_fingerprint(exp, c) for c in exp.conditions}
    why: dict[Unit, str] = {}
    found: dict[Unit, tuple[Source, UnitRecord]] = {}
    base = "no complete run in the store"
    sources = []
    if stored is not None:
        plan.source = source = Source.of_version(stored)
        sources.append(source)
        change = experiment_change(dict(stored.metadata.fingerprint), fingerprint)
        if change is not None:
            base = change
        else:
            for c, r in wanted:
                got = _check(source, treatments[c], c, r, upstreams)
                if isinstance(got, UnitRecord):
                    found[(c, r)] = (source, got)
                elif got is not None:
                    why[(c, r)] = got
    if len(found) < len(wanted):
        for journal in interrupted():
            source = Source.of_journal(journal)
            if experiment_change(dict(source.fingerprint), fingerprint) is not None:
                continue
            sources.append(source)
            for c, r in wanted:
                if (c, r) not in found:
                    got = _check(source, treatments[c], c, r, upstreams)
                    if isinstance(got, UnitRecord):
                        found[(c, r)] = (source, got)
                    elif got is not None:
                        why.setdefault((c, r), got)
    for unit in wanted:
        if unit in found:
            plan.reuse[unit] = found[unit]
            plan.why[unit] = f"reused from {found[unit][0].label}"
        else:
            plan._run(unit, why.get(unit, base))
    used = {id(s) for s, _ in found.values()}
    reran = sorted({p for s in sources if id(s) in used for p, v in upstreams.items()
                    if p in s.upstreams and s.upstreams[p] != v.version})
    if reran and plan.fully_reused:
        plan.notes.append(f"upstream {', '.join(reran)} reran, its artifacts unchanged")
    return plan
