"""The systems compared, and the interface each system module implements.

A system module exposes `run(spec: RunSpec) -> Outcome`. Modules are imported lazily, by
name, inside the measuring subprocess, so that importing the framework is part of that
fresh process and a missing optional dependency only affects its own row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.workloads import Workload


@dataclass(frozen=True)
class RunSpec:
    workload: Workload
    data_dir: str
    cores: int
    variant: str
    phase: str = "measure"  # "prepare" is the untimed first run of W4

    @property
    def strategy(self) -> str:
        return "resume" if self.workload.resume and self.phase == "measure" else "rerun"


@dataclass
class Outcome:
    wall_s: float  # the run itself: graph definition, imports and cluster startup excluded
    cpu_s: float  # sum of thread CPU time measured around every step body
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class System:
    name: str
    module: str
    variant: str = ""
    sequential: bool = False  # usable cores = 1 in the overhead column
    resume: bool = False  # has a store that W4 can resume from
    async_steps: bool = False  # can run W6
    crystallize: bool = False  # gets the "vs best other" column
    reference: bool = False  # runs under the crystallize-ml reference interpreter
    default: bool = True  # measured unless --systems names others
    cluster: bool = False  # runs on the Dask cluster (--dask-cluster chooses which kind)
    note: str = ""

    def skip_reason(self, w: Workload) -> str | None:
        if w.resume and not self.resume:
            return "no resumable store"
        if w.sleep_s and not self.async_steps:
            return "no async steps"
        return None

    def usable_cores(self, cores: int) -> int:
        return 1 if self.sequential else cores


_CZ = "bench.systems.crystallize_graph"
_DASK = "bench.systems.dask_graph"

SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System("crystallize-process", _CZ, "process", resume=True, async_steps=True,
               crystallize=True),
        System("crystallize-thread", _CZ, "thread", resume=True, async_steps=True,
               crystallize=True),
        System("crystallize-process-unbatched", _CZ, "process-unbatched", resume=True,
               async_steps=True, crystallize=True, default=False,
               note="ProcessExecutor(batching=False): one trip to a worker per unit"),
        System("crystallize-dask", _CZ, "dask", resume=True, async_steps=True,
               crystallize=True, cluster=True,
               note="DaskExecutor on the cluster dask-distributed uses; startup excluded"),
        System("crystallize-inline", _CZ, "inline", sequential=True, resume=True,
               async_steps=True, crystallize=True),
        System("loop", "bench.systems.loop", sequential=True, async_steps=True,
               note="sequential, topological order; W6 awaits one sleep after another"),
        System("pool", "bench.systems.pool",
               note="one ProcessPoolExecutor for the whole run, level by level"),
        System("dask-processes", _DASK, "processes",
               note="dask.delayed per unit, scheduler='processes'"),
        System("dask-distributed", _DASK, "distributed", cluster=True,
               note="LocalCluster(processes, 1 thread/worker), or an external cluster "
               "(--dask-cluster external, BENCH_DASK_SCHEDULER); startup excluded from wall"),
        System("crystallize-ml", _CZ, "ml-serial", sequential=True, resume=True,
               async_steps=True, reference=True,
               note="crystallize-ml 0.27.0 defaults (SerialExecution; AsyncExecution for W6)"),
    )
}

DEFAULT_SYSTEMS = tuple(n for n, s in SYSTEMS.items() if s.default and not s.reference)
