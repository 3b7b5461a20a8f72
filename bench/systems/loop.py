"""Baseline: a plain sequential loop over the units in topological order."""

from __future__ import annotations

import time

from bench.systems import Outcome, RunSpec
from bench.workloads import file_unit, sleep_body, unit_inputs


def run(spec: RunSpec) -> Outcome:
    w = spec.workload
    if w.sleep_s:
        return _run_async(spec)
    cpu = 0.0
    t0 = time.perf_counter()
    for node in w.nodes:
        for rep in range(node.replicates):
            cpu += file_unit(
                spec.data_dir, node.name, rep, w.iters, unit_inputs(w, node, rep), w.artifacts
            )
    return Outcome(time.perf_counter() - t0, cpu)


def _run_async(spec: RunSpec) -> Outcome:
    import anyio

    w = spec.workload

    async def sequential() -> float:
        # What a script without a framework does: await each unit in turn.
        return sum([await sleep_body(w.sleep_s) for n in w.nodes for _ in range(n.replicates)])

    t0 = time.perf_counter()
    cpu = anyio.run(sequential)
    return Outcome(time.perf_counter() - t0, cpu)
