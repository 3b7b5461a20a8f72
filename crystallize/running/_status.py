"""What a run of a graph would do with each experiment, without running anything.

Shared by ``crystallize status`` and the graph diagram. The decision is the run's own
(:func:`plan_run` on the version a resume would start from, of each experiment as
:func:`configure` sets it up for a run, under its own strategy), so the two can never
disagree: an experiment is *complete* when a run would reuse its stored run, *stale* when it
would rerun (with the reason), and *never run* when the store holds no run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..model import BASELINE
from ..store import ExperimentStore, StoredVersion
from ._configure import configure
from ._resume import experiment_fingerprint, plan_run

if TYPE_CHECKING:
    from ..experiment import Experiment, ExperimentGraph

State = Literal["complete", "stale", "never run"]


@dataclass(frozen=True)
class Status:
    """One experiment's state in the store.

    ``version`` is the newest complete stored version (None when there is none); ``reason``
    says why a stale experiment would rerun, or what a complete one would reuse.
    """

    state: State
    reason: str
    version: int | None = None
    #: the store root it was read from
    root: Path | None = None

    def describe(self) -> str:
        """A one-line description, e.g. ``complete (v3)`` or ``stale: treatment changed``."""
        if self.state == "complete":
            return f"complete (v{self.version})"
        if self.state == "stale":
            return f"stale: {self.reason}"
        return "never run"


def upstream_refs(graph: ExperimentGraph, name: str) -> list[str]:
    """What ``name`` reads, as ``experiment#output`` with the output alias a config uses."""
    refs = []
    for art in graph.experiments[name].consumed_artifacts():
        producer = graph.experiments.get(art.producer or "")
        outputs = producer.outputs if producer is not None else {}
        alias = next((a for a, out in outputs.items() if out is art), art.name)
        refs.append(f"{art.producer}#{alias}")
    return sorted(set(refs))


def treatment_labels(graph: ExperimentGraph, name: str) -> list[str]:
    """The treatments ``name`` runs with; inherited ones say where from (``double (from
    producer)``)."""
    own = {t.name for t in graph.experiments[name].treatments}
    labels = []
    for treatment in configure(graph)[name].treatments:
        if treatment.name in own:
            labels.append(treatment.name)
            continue
        source = next(
            (up for up in sorted(graph.with_upstream([name]) - {name})
             if any(t.name == treatment.name for t in graph.experiments[up].treatments)), "?")
        labels.append(f"{treatment.name} (from {source})")
    return labels


def upstream_origins(
    experiment: Experiment, stored: Mapping[str, StoredVersion | None]
) -> dict[str, dict[str, str]]:
    """Per condition of ``experiment``, the origin token of each upstream run it would read.

    ``stored`` maps each producer to the version that would be read; a condition the producer
    never ran reads the producer's baseline, as at run time.
    """
    origins: dict[str, dict[str, str]] = {}
    for producer in dict.fromkeys(a.producer or "" for a in experiment.consumed_artifacts()):
        version = stored.get(producer)
        if version is None:
            continue
        produced = {c: info.origin for c, info in version.metadata.conditions.items()}
        for condition in experiment.conditions:
            read = condition if condition in produced else BASELINE
            origins.setdefault(condition, {})[producer] = produced.get(read) or "missing"
    return origins


def experiment_status(graph: ExperimentGraph) -> dict[str, Status]:
    """The :class:`Status` of every experiment of ``graph``, in topological order.

    Reads the store only (``metadata.json``, ``results.json`` and the completion markers of
    the newest usable version, artifact sizes); nothing is run, locked, written or unpickled.
    Each experiment's own strategy counts: under ``rerun`` it is never *complete*, since a run
    recomputes it.
    """
    statuses: dict[str, Status] = {}
    newest: dict[str, StoredVersion | None] = {}
    for name, exp in configure(graph).items():
        root = exp.store_plugin.root_dir.resolve()
        scan = ExperimentStore(root, name).scan()
        stored = newest[name] = scan.version
        for art in exp.consumed_artifacts():
            producer = art.producer or ""
            if producer not in newest:  # produced outside the graph: read from disk at run time
                newest[producer] = ExperimentStore(root, producer).scan().version
        number = stored.number if stored is not None else None
        if exp.strategy != "resume":
            last = f"; newest stored run v{number}" if number is not None else ""
            statuses[name] = Status("stale" if number is not None else "never run",
                                    f"strategy is rerun: every run recomputes it{last}",
                                    number, root)
            continue
        if stored is None:
            why = "; ".join([*scan.notes, "no complete run in the store"])
            statuses[name] = Status("stale" if scan.notes else "never run", why, None, root)
            continue
        rerunning = [p for p in graph.upstream(name) if statuses[p].state != "complete"]
        if rerunning:
            why = ", ".join(f"{p} is {statuses[p].state}" for p in rerunning)
            statuses[name] = Status("stale", f"upstream {why}", number, root)
            continue
        plan = plan_run(
            exp, strategy="resume", stored=stored, fingerprint=experiment_fingerprint(exp),
            upstream_origins=upstream_origins(exp, newest), notes=scan.notes,
        )
        state: State = "complete" if plan.fully_reused else "stale"
        statuses[name] = Status(state, plan.reason, number, root)
    return statuses
