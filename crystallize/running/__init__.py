"""Planning and running: the scheduler, a node's run, units, executors, resume planning and
the status of a graph.

Works on the model (:mod:`crystallize.model`), persists through the store
(:mod:`crystallize.store`) and decides what to rerun by fingerprints
(:mod:`crystallize.fingerprint`).
"""

from ._configure import configure
from ._executors import DaskExecutor, Executor, InlineExecutor, ProcessExecutor, ThreadExecutor
from ._preflight import ReproducibilityWarning
from ._scheduler import RunOptions, Scheduler
from ._status import (
    Planned,
    Status,
    experiment_status,
    plan_graph,
    treatment_labels,
    upstream_refs,
)
from ._unit import UnitRun, run_unit

__all__ = [
    "DaskExecutor",
    "Executor",
    "InlineExecutor",
    "Planned",
    "ProcessExecutor",
    "ReproducibilityWarning",
    "RunOptions",
    "Scheduler",
    "Status",
    "ThreadExecutor",
    "UnitRun",
    "configure",
    "experiment_status",
    "plan_graph",
    "run_unit",
    "treatment_labels",
    "upstream_refs",
]
