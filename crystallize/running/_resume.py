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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..fingerprint import code_fingerprint, code_fingerprint_parts, combine, value_fingerprint
from ..model import BASELINE

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
        return _pipeline_change(stored.get("steps", []), current["steps"])
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
    #: condition -> its stored results.json, to bring over (for replicates not executed)
    reuse: dict[str, dict[str, Any]] = field(default_factory=dict)
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


def plan_run(
    exp: Experiment,
    *,
    strategy: str,
    stored: StoredVersion | None,
    fingerprint: dict[str, Any],
    upstream_origins: dict[str, dict[str, str]],
) -> Plan:
    """Decide what to execute; ``upstream_origins[condition][producer]`` is what it would read."""
    everything = {c: list(range(exp.replicates)) for c in exp.conditions}
    if strategy != "resume":
        return Plan(execute=everything, reasons=["strategy is rerun"])
    if stored is None:
        return Plan(execute=everything, reasons=["no complete run in the store"])
    change = experiment_change(stored.metadata.get("fingerprint", {}), fingerprint)
    if change is not None:
        return Plan(execute=everything, reasons=[change])

    plan = Plan(source=stored)
    stored_conditions: dict[str, Any] = stored.metadata.get("conditions", {})
    stored_reps = int(stored.metadata.get("replicates", 0))
    for condition in exp.conditions:
        info = stored_conditions.get(condition)
        why = None
        results = None
        if info is None:
            why = "new treatment" if condition != BASELINE else "baseline never ran"
        elif info.get("treatment") != treatment_fingerprint(exp, condition):
            why = "treatment changed"
        elif info.get("upstreams", {}) != upstream_origins.get(condition, {}):
            changed = sorted(
                p for p in set(info.get("upstreams", {})) | set(upstream_origins.get(condition, {}))
                if info.get("upstreams", {}).get(p) != upstream_origins.get(condition, {}).get(p)
            )
            why = f"upstream {', '.join(changed)} produced new artifacts"
        else:
            results = stored.condition_results(condition)
            if results is None:
                why = "completion marker or results.json missing"
            else:
                missing = stored.missing_artifacts(results, min(stored_reps, exp.replicates))
                if missing:
                    why = f"artifact file(s) missing: {missing[:3]}"
        if why is not None:
            plan.execute[condition] = list(range(exp.replicates))
            plan.reasons.append(f"{condition}: {why}")
            continue
        assert results is not None
        plan.reuse[condition] = results
        if exp.replicates > stored_reps:
            plan.execute[condition] = list(range(stored_reps, exp.replicates))
            plan.reasons.append(
                f"{condition}: {exp.replicates - stored_reps} more replicate(s) requested"
            )
    if not plan.execute:
        plan.reasons.append(f"reusing v{stored.number}: nothing changed")
    return plan
