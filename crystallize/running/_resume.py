"""Resume decisions: what an experiment's stored run can be reused for, and why not.

An experiment's fingerprint has two levels. The experiment level (pipeline steps with their
normalised code and parameters, datasource, outputs, initial context, master seed) decides
whether anything can be reused at all. The condition level (the treatment's payload and the
exact upstream runs the condition read) decides, condition by condition, what reruns: a new
treatment runs alone, a changed one reruns alone, and a condition whose upstream produced new
artifacts reruns. Every condition also records an ``origin`` token, fresh whenever it is
computed and carried over when it is reused, which is what downstream experiments compare.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import CorruptRecordError
from ..fingerprint import code_fingerprint, code_fingerprint_parts, combine, value_fingerprint
from ..model import BASELINE
from ..store import ConditionRecord

if TYPE_CHECKING:
    from ..experiment import Experiment
    from ..store import StoredVersion


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
            "params": _safe(lambda s: s.fingerprint_parts()["params"], step),
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


@dataclass
class Plan:
    """What to do for one experiment: which replicates of which conditions to execute."""

    #: condition -> replicate indices to execute
    execute: dict[str, list[int]] = field(default_factory=dict)
    #: condition -> its stored record, whose complete units are brought over (not executed)
    reuse: dict[str, ConditionRecord] = field(default_factory=dict)
    source: StoredVersion | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def fully_reused(self) -> bool:
        return not self.execute and self.source is not None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    @property
    def units(self) -> int:
        return sum(len(r) for r in self.execute.values())


def _condition_change(
    exp: Experiment, stored: StoredVersion, condition: str, origins: dict[str, str]
) -> str | ConditionRecord:
    """Why ``condition`` cannot reuse anything from ``stored``, or its stored record."""
    info = stored.metadata.conditions.get(condition)
    if info is None:
        return "new treatment" if condition != BASELINE else "baseline never ran"
    if info.treatment != treatment_fingerprint(exp, condition):
        return "treatment changed"
    if info.upstreams != origins:
        changed = sorted(p for p in set(info.upstreams) | set(origins)
                         if info.upstreams.get(p) != origins.get(p))
        return f"upstream {', '.join(changed)} produced new artifacts"
    try:
        record = stored.condition_record(condition)
    except CorruptRecordError as exc:
        return str(exc)
    complete = [u.replicate for u in record.units[: exp.replicates] if u.state == "complete"]
    problems = stored.file_problems(record, complete)
    if problems:
        return f"artifact file(s) missing or changed: {problems[:3]}"
    return record


def plan_run(
    exp: Experiment,
    *,
    strategy: str,
    stored: StoredVersion | None,
    fingerprint: dict[str, Any],
    upstream_origins: dict[str, dict[str, str]],
    notes: Sequence[str] = (),
) -> Plan:
    """Decide what to execute; ``upstream_origins[condition][producer]`` is what it would read.

    ``notes`` say why newer versions than ``stored`` were passed over (they lead the reasons).
    """
    everything = {c: list(range(exp.replicates)) for c in exp.conditions}
    if strategy != "resume":
        return Plan(execute=everything, reasons=["strategy is rerun"])
    if stored is None:
        return Plan(execute=everything, reasons=[*notes, "no complete run in the store"])
    change = experiment_change(dict(stored.metadata.fingerprint), fingerprint)
    if change is not None:
        return Plan(execute=everything, reasons=[*notes, change])

    plan = Plan(source=stored, reasons=list(notes))
    for condition in exp.conditions:
        found = _condition_change(exp, stored, condition, upstream_origins.get(condition, {}))
        if isinstance(found, str):
            plan.execute[condition] = list(range(exp.replicates))
            plan.reasons.append(f"{condition}: {found}")
            continue
        plan.reuse[condition] = found
        units = found.units[: exp.replicates]
        failed = [u.replicate for u in units if u.state == "failed"]
        never = [u.replicate for u in units if u.state == "never ran"]
        more = exp.replicates - found.replicates
        todo = failed + never + list(range(found.replicates, exp.replicates))
        if not todo:
            continue
        plan.execute[condition] = sorted(todo)
        why = []
        if failed:
            why.append(f"replicate(s) {failed} failed in v{stored.number}")
        if never:
            why.append(f"replicate(s) {never} never ran in v{stored.number}")
        if more > 0:
            why.append(f"{more} more replicate(s) requested")
        plan.reasons.append(f"{condition}: {', '.join(why)}")
    if not plan.execute:
        plan.reasons.append(f"reusing v{stored.number}: nothing changed")
    return plan
