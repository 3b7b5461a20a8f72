"""An external Dask cluster for the bench: a scheduler and workers, each a process of its own.

This is how users run a cluster (``dask scheduler`` and ``dask worker``, here through
``python -m distributed.cli...``), unlike a ``LocalCluster``, whose scheduler lives in the
client's own process and shares its interpreter lock with whatever the client does. The
cluster outlives the measurements, as a user's does: its workers have imported what the
systems need after their first run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

#: How long the scheduler and its workers may take to come up on a busy machine.
PATIENCE_S = 90.0


class ClusterStartError(RuntimeError):
    """The scheduler or a worker did not come up; the message names its log."""


def _wait(check: Callable[[], bool], what: str,
          procs: list[tuple[Path, subprocess.Popen[bytes]]]) -> None:
    """Poll ``check``; fail at once, naming the log, when a process of the cluster exits."""
    deadline = time.monotonic() + PATIENCE_S
    while not check():
        for log, proc in procs:
            if proc.poll() is not None:
                raise ClusterStartError(
                    f"a process of the external Dask cluster exited (status {proc.returncode}) "
                    f"while waiting for {what}; its log is {log}. Dask must be installed "
                    "(pip install 'crystallize[dask]'), or run with --dask-cluster local"
                )
        if time.monotonic() > deadline:
            raise ClusterStartError(f"gave up waiting {PATIENCE_S:g} s for {what}; the logs "
                                    f"are under {procs[0][0].parent.parent}")
        time.sleep(0.05)


def _address(file: Path) -> str | None:
    try:
        return str(json.loads(file.read_text())["address"])
    except (OSError, ValueError, KeyError):
        return None


@contextlib.contextmanager
def external_cluster(workers: int, folder: Path, repo_root: Path) -> Iterator[str]:
    """Start a scheduler and ``workers`` single-threaded workers; yield the address.

    Each process runs in a folder of its own under ``folder`` and logs there; all of them
    have ``repo_root`` on ``PYTHONPATH`` (the Dask systems' tasks live in ``bench``). They are
    stopped by their PIDs when the block ends.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(repo_root), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    file = folder / "scheduler.json"
    procs: list[tuple[Path, subprocess.Popen[bytes]]] = []

    def start(name: str, argv: list[str]) -> None:
        cwd = folder / name
        cwd.mkdir(exist_ok=True)
        with open(cwd / "log", "wb") as log:
            procs.append((cwd / "log", subprocess.Popen(
                [sys.executable, "-m", *argv], cwd=cwd, env=env, stdout=log,
                stderr=subprocess.STDOUT)))

    try:
        start("scheduler", ["distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                            "--port", "0", "--no-dashboard", "--scheduler-file", str(file)])
        _wait(lambda: _address(file) is not None, "the scheduler's address", procs)
        for i in range(workers):
            start(f"worker{i}", ["distributed.cli.dask_worker", "--nthreads", "1",
                                 "--no-dashboard", "--scheduler-file", str(file)])
        address = _address(file)
        assert address is not None

        from distributed import Client

        with Client(address, set_as_default=False) as client:
            def joined() -> bool:
                try:
                    client.wait_for_workers(workers, timeout=0.5)
                except TimeoutError:
                    return False
                return True

            _wait(joined, f"{workers} workers", procs)
        yield address
    finally:
        # All asked at once, then waited for within one shared grace period.
        for _, proc in procs:
            proc.terminate()
        deadline = time.monotonic() + 20
        for _, proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
