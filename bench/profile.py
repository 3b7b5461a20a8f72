"""Where a tiny node's time goes: `python -m bench.profile [W2-chain W4-chain ...]`.

Runs one workload once in this process, with the inline executor unless told otherwise (so
unit code and the engine share one process), and times the engine's phases by wrapping the
functions that make them up with a wall clock: no profiler, so system calls and Python code
are not distorted relative to each other. Store writes run in worker threads; their time is
counted all the same. For a W4 workload the graph is first run untimed, then resumed.
"""

from __future__ import annotations

import argparse
import functools
import os
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

# The private modules whose functions are wrapped: profiling measures the engine's internals.
from crystallize.model import _artifacts as artifacts
from crystallize.running import _node as experiment_run
from crystallize.running import _unit as unit
from crystallize.store import _store as store

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
    "store: metadata.json and its marker": [(store.VersionWriter, "publish")],
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


@contextmanager
def counted_creations() -> Iterator[dict[str, float]]:
    """Count and time the directories and files created through ``os`` while the block runs.

    On disks where creating an inode is slow, these dominate a tiny node's cost (reading,
    renaming and failed lookups are cheap by comparison).
    """
    counts = {"dirs": 0.0, "files": 0.0, "seconds": 0.0}
    real_mkdir, real_open = os.mkdir, os.open

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        real_mkdir(path, *args, **kwargs)  # raises (uncounted) when it exists
        counts["seconds"] += time.perf_counter() - started
        counts["dirs"] += 1

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        started = time.perf_counter()
        fd = real_open(path, flags, *args, **kwargs)
        if flags & os.O_CREAT:
            counts["seconds"] += time.perf_counter() - started
            counts["files"] += 1
        return fd

    os.mkdir, os.open = mkdir, open_
    try:
        yield counts
    finally:
        os.mkdir, os.open = real_mkdir, real_open


def creation_cost(parent: Path, count: int = 100) -> float:
    """Seconds to create one inode in ``parent``'s file system, measured apart from any run.

    Half directories, half small files (the mix a node's store writes), each in a fresh
    directory, so the figure is the disk's and not the engine's.
    """
    scratch = Path(tempfile.mkdtemp(prefix="inodes-", dir=parent))
    try:
        started = time.perf_counter()
        for i in range(count // 2):
            os.mkdir(scratch / f"d{i}")
            fd = os.open(scratch / f"d{i}" / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, b"x")
            os.close(fd)
        return (time.perf_counter() - started) / (count // 2 * 2)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def profile(
    key: str, data_dir: Path, executor: str
) -> tuple[float, int, dict[str, float], dict[str, float]]:
    workload = build(False, calibrate())[key]
    if workload.resume:
        spec = RunSpec(workload, str(data_dir), 2, executor, "prepare")
        cz.ExperimentGraph.from_experiments(crystallize_graph.build(spec)).run(executor=executor)
    spec = RunSpec(workload, str(data_dir), 2, executor, "measure")
    graph = cz.ExperimentGraph.from_experiments(crystallize_graph.build(spec))
    with timed_phases() as totals, counted_creations() as created:
        started = time.perf_counter()
        graph.run(executor=executor, strategy="resume" if workload.resume else "rerun")
        wall = time.perf_counter() - started
    phases = {phase: totals.get(phase, 0.0) for phase in PHASES}
    phases["everything else (scheduling, events, results, event loop)"] = max(
        0.0, wall - sum(phases.values()))
    return wall, len(workload.nodes), phases, created


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    ap.add_argument("workloads", nargs="*", default=["W2-chain", "W4-chain"])
    ap.add_argument("--data-dir", help="parent of the scratch data dir (default: bench/.scratch)")
    ap.add_argument("--executor", default="inline", choices=("inline", "thread", "process"),
                    help="inline (default) keeps the units' work in this process, where the "
                    "phases can see it; process adds the round trip to a worker")
    args = ap.parse_args()
    parent = Path(args.data_dir) if args.data_dir else Path(__file__).parent / ".scratch"
    parent.mkdir(parents=True, exist_ok=True)
    for key in args.workloads:
        data_dir = Path(tempfile.mkdtemp(prefix=f"profile-{key}-", dir=parent))
        try:
            wall, nodes, phases, created = profile(key, data_dir, args.executor)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        print(f"\n{key}: {wall / nodes * 1000:.2f} ms/node ({nodes} nodes, "
              f"{args.executor} executor)\n")
        print("| phase | ms/node | share |\n|---|---|---|")
        for phase, seconds in phases.items():
            print(f"| {phase} | {seconds / nodes * 1000:.2f} | {seconds / wall:.0%} |")
        made = created["dirs"] + created["files"]
        if made:
            print(f"\nCreated per node: {made / nodes:.1f} inodes ({created['dirs'] / nodes:.1f} "
                  f"directories and {created['files'] / nodes:.1f} files), "
                  f"{created['seconds'] / made * 1000:.3f} ms each on average within the run "
                  f"({created['seconds'] / wall:.0%} of the wall time, counted within the "
                  "phases above)")
        alone = creation_cost(parent)
        print(f"Creating one inode on this disk, measured alone: {alone * 1000:.3f} ms, so the "
              f"inodes of a node cost at least {made / nodes * alone * 1000:.2f} ms/node here")


if __name__ == "__main__":
    main()
