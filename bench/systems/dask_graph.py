"""Dask: one dask.delayed task per unit, depending on exactly the upstream units it reads.

Variants: "processes" (the local multiprocessing scheduler) and "distributed" (a
LocalCluster whose startup is timed separately and excluded from the wall time, or the
external cluster whose scheduler ``BENCH_DASK_SCHEDULER`` names). ``crystallize-dask`` runs on
the same cluster, through :func:`cluster_client`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import dask

from bench.systems import Outcome, RunSpec
from bench.workloads import file_unit, unit_inputs


def _unit(
    data_dir: str, node: str, rep: int, iters: int, inputs: list[tuple[str, int]], write: bool,
    *upstream: float,
) -> float:
    # `upstream` carries no data (the files do); it only orders this task after its inputs.
    return file_unit(data_dir, node, rep, iters, inputs, write)


def _tasks(spec: RunSpec) -> list[Any]:
    w = spec.workload
    delayed_unit = dask.delayed(_unit, pure=False)
    by_unit: dict[tuple[str, int], Any] = {}
    for node in w.nodes:
        for rep in range(node.replicates):
            inputs = unit_inputs(w, node, rep)
            by_unit[(node.name, rep)] = delayed_unit(
                spec.data_dir, node.name, rep, w.iters, inputs, w.artifacts,
                *(by_unit[i] for i in inputs),
            )
    return list(by_unit.values())


def run(spec: RunSpec) -> Outcome:
    tasks = _tasks(spec)
    if spec.variant == "processes":
        t0 = time.perf_counter()
        cpus = dask.compute(*tasks, scheduler="processes", num_workers=spec.cores)
        return Outcome(time.perf_counter() - t0, sum(cpus))

    with cluster_client(spec.cores) as (client, startup):
        t1 = time.perf_counter()
        cpus = client.gather(client.compute(tasks))
        wall = time.perf_counter() - t1
    return Outcome(wall, sum(cpus), {"startup_s": startup})


@contextlib.contextmanager
def cluster_client(cores: int) -> Iterator[tuple[Any, float]]:
    """A client of the cluster both Dask systems run on, and how long it took to get.

    ``BENCH_DASK_SCHEDULER=tcp://HOST:PORT`` names an external cluster (a scheduler and
    workers started apart, as users run them); without it, a LocalCluster of ``cores``
    single-threaded worker processes is started (and closed) for the measurement.
    """
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    address = os.environ.get("BENCH_DASK_SCHEDULER")
    cluster = None
    if address:
        client = Client(address)
    else:
        cluster = LocalCluster(
            n_workers=cores, threads_per_worker=1, processes=True,
            dashboard_address=None, silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    try:
        yield client, time.perf_counter() - t0
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
