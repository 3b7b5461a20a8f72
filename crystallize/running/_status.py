"""What a run of a graph would do with each experiment and unit, without running anything.

Shared by ``crystallize run --dry-run``, ``crystallize status`` and the graph diagram. The
decision is the run's own (:func:`plan_run` on the version a resume would start from, of each
experiment as :func:`configure` sets it up for a run, under its own strategy), so they can
never disagree: an experiment is *complete* when a run would reuse its stored run, *stale* when
it would rerun (with the reason), and *never run* when the store holds no run. An upstream that
would rerun is planned first; what its rerun units would write is unknown, so the units that
read it are planned to run (a real run may still reuse them, if the rerun writes identical
artifacts).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..store import ExperimentStore, Journal
from ._configure import configure
from ._node import load_stored_result, upstream_view
from ._resume import PENDING, Plan, experiment_fingerprint, plan_run
from ._unit import UpstreamView

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


def _planned_view(exp: Experiment, plan: Plan) -> UpstreamView:
    """What ``exp``'s run would offer its consumers: reused units' artifacts as stored, the
    units it would execute as :data:`PENDING`."""
    names = [art.name for art in exp.outputs.values()]
    artifacts: dict[str, dict[str, list[str | None]]] = {}
    hashes: dict[str, dict[str, list[str | None]]] = {}
    for cond in exp.conditions:
        units = [plan.reuse.get((cond, r), (None, None))[1] for r in range(exp.replicates)]
        artifacts[cond] = {n: [u.artifacts[n].path if u and n in u.artifacts else None
                               for u in units] for n in names}
        hashes[cond] = {n: [(u.artifacts[n].blake2b if n in u.artifacts else None) if u
                            else PENDING for u in units] for n in names}
    source = plan.source
    return UpstreamView(
        experiment=exp.name or "", version=source.number if plan.fully_reused and source else -1,
        path=str(source.path if source else ""), replicates=exp.replicates, artifacts=artifacts,
        hashes=hashes,
    )


@dataclass(frozen=True)
class Planned:
    """What a run would do with one experiment (see :func:`plan_graph`)."""

    experiment: Experiment
    plan: Plan
    root: Path
    #: the version a resume would start from
    version: int | None
    #: why newer versions were passed over
    notes: tuple[str, ...]


def plan_graph(
    graph: ExperimentGraph, *, replicates: int | None = None, strategy: str | None = None,
    force: Iterable[str] = (),
) -> dict[str, Planned]:
    """The plan a run of ``graph`` would make for each experiment, in topological order.

    Reads the store only (metadata, results, journals, artifact sizes); nothing is run,
    locked, written or unpickled.
    """
    planned: dict[str, Planned] = {}
    views: dict[str, UpstreamView | None] = {}
    for name, exp in configure(graph, replicates=replicates, strategy=strategy,
                               force=force).items():
        root = exp.store_plugin.root_dir.resolve()
        store = ExperimentStore(root, name)
        for art in exp.consumed_artifacts():
            producer = art.producer or ""
            if producer not in views:  # produced outside the graph: read from disk at run time
                stored = ExperimentStore(root, producer).scan().version
                result = load_stored_result(stored) if stored is not None else None
                views[producer] = upstream_view(result) if result is not None else None
        upstreams = {p: v for a in exp.consumed_artifacts()
                     if (v := views.get(p := a.producer or "")) is not None}
        scan = store.scan()
        after = scan.version.number if scan.version else None

        def interrupted(store: ExperimentStore = store, after: int | None = after
                        ) -> list[Journal]:
            found = (Journal.read(n, store.dir / f"v{n}") for n in store.newer_than(after))
            return [j for j in found if j is not None]

        plan = plan_run(
            exp, strategy=exp.strategy, fingerprint=experiment_fingerprint(exp),
            stored=scan.version, interrupted=interrupted, upstreams=upstreams, notes=scan.notes,
        )
        planned[name] = Planned(exp, plan, root, after, scan.notes)
        views[name] = _planned_view(exp, plan)
    return planned


def experiment_status(graph: ExperimentGraph) -> dict[str, Status]:
    """The :class:`Status` of every experiment of ``graph``, in topological order.

    Reads the store only (``metadata.json`` and the completion marker of
    the newest usable version, artifact sizes); nothing is run, locked, written or unpickled.
    Each experiment's own strategy counts: under ``rerun`` it is never *complete*, since a run
    recomputes it.
    """
    statuses: dict[str, Status] = {}
    for name, p in plan_graph(graph).items():
        number = p.version
        if p.experiment.strategy != "resume":
            last = f"; newest stored run v{number}" if number is not None else ""
            statuses[name] = Status("stale" if number is not None else "never run",
                                    f"strategy is rerun: every run recomputes it{last}",
                                    number, p.root)
        elif number is None:
            why = "; ".join([*p.notes, "no complete run in the store"])
            statuses[name] = Status("stale" if p.notes else "never run", why, None, p.root)
        else:
            state: State = "complete" if p.plan.fully_reused else "stale"
            statuses[name] = Status(state, p.plan.reason, number, p.root)
    return statuses
