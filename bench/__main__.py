"""`python -m bench`: every workload × every system, each measurement in a fresh process."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import reference, report
from bench.cluster import ClusterStartError, external_cluster
from bench.run_one import RESULT_PREFIX
from bench.systems import DEFAULT_SYSTEMS, SYSTEMS, System
from bench.workloads import FORBID_ENV, Workload, build, calibrate, select

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the W1–W6 workloads against crystallize and the alternatives.",
    )
    ap.add_argument("--workloads", help="comma list: W1..W6 (a group) or keys like W2-fan")
    ap.add_argument(
        "--systems",
        help=f"comma list from: {', '.join(SYSTEMS)} (default: all but crystallize-ml)",
    )
    ap.add_argument("--rounds", type=int, help="rounds per cell (default 5; 1 with --quick)")
    ap.add_argument(
        "--data-dir",
        help="parent of the per-measurement data dirs (default: bench/.scratch on the "
        "project's disk); e.g. /dev/shm to take file-system cost out",
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 round: a smoke test")
    ap.add_argument(
        "--reference", action="store_true",
        help=f"also run {reference.PACKAGE} {reference.VERSION} from a cached venv",
    )
    ap.add_argument(
        "--reference-venv", default=str(BENCH_DIR / ".venv-reference"),
        help="where the reference venv is cached (default: bench/.venv-reference)",
    )
    ap.add_argument("--json", help="write the JSON here instead of bench/results/<UTC>.json")
    ap.add_argument("--timeout", type=float, help="seconds per measurement process")
    ap.add_argument(
        "--dask-cluster", choices=("local", "external"), default="local",
        help="the cluster of the Dask systems: a LocalCluster per measurement (its scheduler "
        "in the measuring process), or one scheduler and one worker per core started as "
        "processes of their own for the whole bench, as users run them (default: local; "
        "BENCH_DASK_SCHEDULER=tcp://HOST:PORT names a cluster of your own instead)",
    )
    return ap.parse_args(argv)


class Harness:
    def __init__(self, args: argparse.Namespace, iters_per_ms: float, ref_python: Path | None):
        self.args = args
        self.iters_per_ms = iters_per_ms
        self.ref_python = ref_python
        self.cores = os.cpu_count() or 1
        self.timeout = args.timeout or (120.0 if args.quick else 1800.0)
        parent = Path(args.data_dir) if args.data_dir else BENCH_DIR / ".scratch"
        # Every measurement's data stays here until the bench ends (see `measure`).
        self.data_root = parent / f"bench-{os.getpid()}"

    def _command(self, system: System) -> list[str]:
        if system.reference:
            assert self.ref_python is not None
            return [str(self.ref_python), str(BENCH_DIR / "run_one.py")]
        return [sys.executable, "-m", "bench.run_one"]

    def spawn(
        self, system: System, workload: Workload | None, data_dir: str | None,
        phase: str = "measure", forbid_units: bool = False,
    ) -> dict[str, Any]:
        cmd = [*self._command(system), "--system", system.name, "--cores", str(self.cores)]
        if workload is None:
            cmd.append("--check")
        else:
            cmd += ["--workload", workload.key, "--data-dir", str(data_dir), "--phase", phase,
                    "--iters-per-ms", repr(self.iters_per_ms)]
            if self.args.quick:
                cmd.append("--quick")
        env = dict(os.environ)
        env.pop(FORBID_ENV, None)
        if forbid_units:
            env[FORBID_ENV] = "1"
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                timeout=self.timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {self.timeout:g} s"}
        process_s = time.perf_counter() - t0
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
        if not lines:
            tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:]
            why = tail[0] if tail else "no output"
            return {"error": f"exit {proc.returncode} without a result: {why}"[:500]}
        record: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX):])
        record["process_s"] = process_s
        return record

    def measure(self, system: System, workload: Workload) -> dict[str, Any]:
        """One timed run in a fresh data directory, kept until :meth:`close`.

        Deleting it here would bias the next measurement: ext4 without a journal avoids
        reusing inodes freed in the last minutes (``recently_deleted`` in fs/ext4/ialloc.c),
        checking each in turn on every file it creates, so a run right after a large deletion
        pays per file it creates in proportion to what was deleted.
        """
        self.data_root.mkdir(parents=True, exist_ok=True)
        data_dir = tempfile.mkdtemp(prefix=f"{workload.key}-{system.name}-", dir=self.data_root)
        try:
            if workload.resume:
                prep = self.spawn(system, workload, data_dir, phase="prepare")
                if "error" in prep:
                    return {"system": system.name, "workload": workload.key,
                            "error": f"first (untimed) run: {prep['error']}"}
                _settle()
            return self.spawn(system, workload, data_dir, forbid_units=workload.resume)
        finally:
            _settle()

    def close(self) -> None:
        shutil.rmtree(self.data_root, ignore_errors=True)


def _settle() -> None:
    """Flush the file system's pending writes before the next measurement starts.

    Without it, the write-back of one measurement's files (and of their deletion) is paid by
    whichever system is measured next: the systems that create many small files would slow
    down the others, and themselves in the next round.
    """
    if hasattr(os, "sync"):
        os.sync()


def _systems(args: argparse.Namespace) -> list[System]:
    names = [s.strip() for s in args.systems.split(",")] if args.systems else list(
        DEFAULT_SYSTEMS)
    if args.reference and not args.systems:
        names += [n for n, s in SYSTEMS.items() if s.reference]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise SystemExit(
            f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}"
        )
    return [SYSTEMS[n] for n in names]


def _public_args(argv: list[str]) -> list[str]:
    """The command line as recorded in results: no paths of this particular machine."""
    out: list[str] = []
    for a in argv:
        flag, eq, value = a.partition("=")
        path = value if eq else a
        if os.path.isabs(path) and not path.startswith("/dev/shm"):
            path = "<path>"
        out.append(f"{flag}={path}" if eq else path)
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    systems = _systems(args)
    if rounds < 5 and not args.quick:
        print("bench: fewer than 5 rounds; medians will be noisy", file=sys.stderr)

    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    ref_python = None
    if any(s.reference for s in systems):
        ref_python, why = reference.ensure(Path(args.reference_venv))
        if ref_python is None:
            print(f"bench: skipping crystallize-ml: {why}", file=sys.stderr)
            for s in systems:
                if s.reference:
                    skipped[s.name] = why

    iters_per_ms = calibrate()
    workloads = select(build(args.quick, iters_per_ms), args.workloads)
    harness = Harness(args, iters_per_ms, ref_python)
    print(f"bench: {harness.cores} cores, cpu_work calibrated to {iters_per_ms:.0f} iterations/ms",
          file=sys.stderr)

    for s in systems:
        if s.name in skipped:
            continue
        check = harness.spawn(s, None, None)
        if "error" in check:
            failed[s.name] = check["error"]
            print(f"bench: {s.name} unavailable: {check['error']}", file=sys.stderr)
    active = [s for s in systems if s.name not in skipped and s.name not in failed]

    measurements: list[dict[str, Any]] = []
    started = time.perf_counter()
    cluster = contextlib.ExitStack()
    if args.dask_cluster == "external" and any(s.cluster for s in active):
        try:
            address = cluster.enter_context(
                external_cluster(harness.cores, harness.data_root / "cluster", REPO_ROOT))
        except ClusterStartError as exc:
            raise SystemExit(f"bench: {exc}") from None
        # The measuring processes inherit it (bench.systems.dask_graph.cluster_client).
        os.environ["BENCH_DASK_SCHEDULER"] = address
    try:
        for r in range(rounds):
            for w in workloads:
                shift = r % max(1, len(active))
                for s in active[shift:] + active[:shift]:
                    if s.skip_reason(w):
                        continue
                    rec = harness.measure(s, w)
                    rec.update(system=s.name, workload=w.key, round=r)
                    measurements.append(rec)
                    shown = rec.get("error") or f"{rec['wall_s']:.3f} s"
                    print(f"[{r + 1}/{rounds}] {w.key:<9} {s.name:<20} {shown}",
                          file=sys.stderr)
    finally:
        cluster.close()
        harness.close()

    rows = report.summarize(measurements, workloads, systems, harness.cores, skipped, failed)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    command = "python -m bench " + " ".join(_public_args(sys.argv[1:] if argv is None else argv))
    meta = {
        "timestamp": stamp,
        "command": command.strip(),
        "quick": args.quick,
        "rounds": rounds,
        "cores": harness.cores,
        "iters_per_ms": iters_per_ms,
        "data_dir": _public_args([args.data_dir])[0] if args.data_dir
        else "bench/.scratch (project disk)",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "elapsed_s": time.perf_counter() - started,
        "dask_cluster": "external" if os.environ.get("BENCH_DASK_SCHEDULER") else "local",
    }
    print(report.markdown(rows, workloads, systems, meta))
    out = Path(args.json) if args.json else (
        BENCH_DIR / "results" / (stamp + ("-quick" if args.quick else "") + ".json"))
    report.write_json(out, meta, workloads, systems, rows, measurements)
    print(f"bench: results written to {out}", file=sys.stderr)
    return 1 if failed or any("error" in m for m in measurements) else 0


if __name__ == "__main__":
    sys.exit(main())
