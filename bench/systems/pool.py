"""Baseline: one ProcessPoolExecutor for the whole run, submitting level by level."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor

from bench.systems import Outcome, RunSpec
from bench.workloads import file_unit, levels, unit_inputs


def run(spec: RunSpec) -> Outcome:
    w = spec.workload
    cpu = 0.0
    # Pool startup is inside the timed region: a user of this approach pays it every run.
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=spec.cores) as pool:
        for level in levels(w):
            futures = [
                pool.submit(
                    file_unit, spec.data_dir, node.name, rep, w.iters,
                    unit_inputs(w, node, rep), w.artifacts,
                )
                for node in level
                for rep in range(node.replicates)
            ]
            cpu += sum(f.result() for f in futures)
    return Outcome(time.perf_counter() - t0, cpu)
