"""How a run configures a graph's experiments: one pure function, shared by the scheduler and
every view of what a run would do (status, diagrams, the UI)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..experiment import Experiment, ExperimentGraph
    from ..model import Treatment


def configure(
    graph: ExperimentGraph, *, treatments: Iterable[Treatment] | None = None,
    replicates: int | None = None, strategy: str | None = None, force: Iterable[str] = (),
) -> dict[str, Experiment]:
    """Every experiment of ``graph`` as a run configures it, in topological order.

    Graph-level ``treatments``, ``replicates`` and ``strategy`` override each experiment's own;
    without graph-level treatments an experiment also runs those of its upstreams (its own win
    on a name clash), so a treatment applied to a producer reaches its consumers. The
    experiments in ``force``, and everything downstream of them, rerun whatever their strategy.
    The graph's experiments are left untouched: each result is a copy.
    """
    chosen = None if treatments is None else list(treatments)
    forced = graph.with_downstream(force)
    configured: dict[str, Experiment] = {}
    for name in graph.topological_order():
        exp = graph.experiments[name]
        if chosen is not None:
            run_treatments = chosen
        else:
            merged: dict[str, Treatment] = {}
            for parent in graph.upstream(name):
                for t in configured[parent].treatments:
                    merged.setdefault(t.name, t)
            merged.update({t.name: t for t in exp.treatments})
            run_treatments = list(merged.values())
        configured[name] = exp.with_overrides(
            treatments=run_treatments, replicates=replicates,
            strategy="rerun" if name in forced else strategy,
        )
    return configured
