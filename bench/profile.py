"""Where a tiny node's time goes: `python -m bench.profile [W2-chain W4-chain ...]`.

Runs one workload once in this process with the inline executor (so unit code and the engine
share one process) and times the engine's phases by wrapping the functions that make them up
with a wall clock: no profiler, so system calls and Python code are not distorted relative to
each other. Store writes run in worker threads; their time is counted all the same. For a W4
workload the graph is first run untimed, then resumed.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import crystallize as cz
from bench.systems import RunSpec, crystallize_graph
from bench.workloads import build, calibrate
from crystallize import artifacts, experiment_run, store, unit

#: Phase -> the engine functions whose wall time makes it up, as (owner, attribute).
PHASES: dict[str, list[tuple[Any, str]]] = {
    "fingerprinting (code, params, treatments)": [
        (experiment_run, "experiment_fingerprint"), (experiment_run, "treatment_fingerprint"),
    ],
    "resume decision (read and check the stored run)": [(experiment_run.ExperimentRun, "_plan")],
    "store: allocate the version, reuse, prune": [
        (store.ExperimentStore, "allocate"), (store.VersionWriter, "reuse"),
        (store.ExperimentStore, "prune"),
    ],
    "store: results.json, markers, metadata.json": [
        (store.VersionWriter, "finish_condition"), (store.VersionWriter, "publish"),
    ],
    "unit: write its artifact": [(unit.UnitRun, "write_artifact")],
    "unit: read upstream artifacts": [(artifacts.Artifact, "fetch")],
    "pickling the experiment for workers": [(experiment_run.ExperimentRun, "_blob")],
}


@contextmanager
def timed_phases() -> Iterator[dict[str, float]]:
    """Wrap every function of PHASES with a wall clock while the block runs."""
    totals: dict[str, float] = defaultdict(float)
    originals: list[tuple[Any, str, Any]] = []

    def wrap(phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[phase] += time.perf_counter() - started
        return timed

    for phase, functions in PHASES.items():
        for owner, name in functions:
            original = vars(owner)[name]
            originals.append((owner, name, original))
            setattr(owner, name, wrap(phase, original))
    try:
        yield totals
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def profile(key: str, data_dir: Path) -> tuple[float, int, dict[str, float]]:
    workload = build(False, calibrate())[key]
    if workload.resume:
        spec = RunSpec(workload, str(data_dir), 2, "inline", "prepare")
        cz.ExperimentGraph.from_experiments(crystallize_graph.build(spec)).run(executor="inline")
    spec = RunSpec(workload, str(data_dir), 2, "inline", "measure")
    graph = cz.ExperimentGraph.from_experiments(crystallize_graph.build(spec))
    with timed_phases() as totals:
        started = time.perf_counter()
        graph.run(executor="inline", strategy="resume" if workload.resume else "rerun")
        wall = time.perf_counter() - started
    phases = {phase: totals.get(phase, 0.0) for phase in PHASES}
    phases["everything else (scheduling, events, results, event loop)"] = max(
        0.0, wall - sum(phases.values()))
    return wall, len(workload.nodes), phases


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    ap.add_argument("workloads", nargs="*", default=["W2-chain", "W4-chain"])
    ap.add_argument("--data-dir", help="parent of the scratch data dir (default: bench/.scratch)")
    args = ap.parse_args()
    parent = Path(args.data_dir) if args.data_dir else Path(__file__).parent / ".scratch"
    parent.mkdir(parents=True, exist_ok=True)
    for key in args.workloads:
        data_dir = Path(tempfile.mkdtemp(prefix=f"profile-{key}-", dir=parent))
        try:
            wall, nodes, phases = profile(key, data_dir)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        print(f"\n{key}: {wall / nodes * 1000:.2f} ms/node ({nodes} nodes, inline executor)\n")
        print("| phase | ms/node | share |\n|---|---|---|")
        for phase, seconds in phases.items():
            print(f"| {phase} | {seconds / nodes * 1000:.2f} | {seconds / wall:.0%} |")


if __name__ == "__main__":
    main()
