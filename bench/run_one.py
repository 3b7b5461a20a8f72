"""One measurement, in a fresh process: `python -m bench.run_one --system S --workload W ...`.

Prints exactly one line starting with RESULT_PREFIX followed by JSON (frameworks may print
other lines; the harness only reads that one). Exit status 0 even when the run failed: the
JSON then carries "error".

The crystallize-ml reference interpreter runs this file by path instead of with -m, so that
the repository root (which holds this project's own `crystallize/`) is appended to the END
of sys.path, after the interpreter's site-packages where crystallize-ml lives.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback

if __name__ == "__main__" and not __package__:
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[0:1] = []  # drop bench/ itself: it is not a package root
    sys.path.append(_root)

from bench.systems import SYSTEMS, RunSpec  # noqa: E402
from bench.workloads import build  # noqa: E402

RESULT_PREFIX = "BENCH_RESULT "


def _emit(payload: dict[str, object]) -> None:
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(payload), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.run_one")
    ap.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    ap.add_argument("--workload", help="workload key, e.g. W1 or W2-chain")
    ap.add_argument("--data-dir")
    ap.add_argument("--iters-per-ms", type=float, default=1.0)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--phase", choices=("measure", "prepare"), default="measure")
    ap.add_argument("--check", action="store_true", help="only import the system and exit")
    args = ap.parse_args(argv)

    system = SYSTEMS[args.system]
    record: dict[str, object] = {"system": system.name, "workload": args.workload}
    try:
        t0 = time.perf_counter()
        module = importlib.import_module(system.module)
        record["import_s"] = time.perf_counter() - t0
        if args.check:
            _emit({**record, "ok": True})
            return
        workload = build(args.quick, args.iters_per_ms)[args.workload]
        spec = RunSpec(workload, args.data_dir, args.cores, system.variant, args.phase)
        outcome = module.run(spec)
        record.update(wall_s=outcome.wall_s, cpu_s=outcome.cpu_s, **outcome.extra)
    except Exception as exc:  # any failure becomes a reported cell, not a crash
        tb = traceback.format_exc(limit=-3)
        print(tb, file=sys.stderr)
        record["error"] = f"{type(exc).__name__}: {exc}"[:500]
    _emit(record)


if __name__ == "__main__":
    main()
