"""The store under faults and concurrency (SPEC §4), with real subprocesses and file locks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from crystallize import Experiment, Treatment, data_source, pipeline_step
from crystallize.errors import CorruptRecordError
from crystallize.store import MARKER, ExperimentStore

WORKLOAD = '''
import json, os, sys, time
from crystallize import (Artifact, ArtifactPlugin, Experiment, ExperimentGraph,
                         data_source, pipeline_step)

LOG = os.environ["CRYSTALLIZE_TEST_LOG"]

@data_source
def source(ctx):
    return list(range(10))

@pipeline_step()
def produce(data, ctx, summary: Artifact, pause=0.0):
    with open(LOG, "a") as f:
        f.write(f"produce {ctx['condition']} {ctx['replicate']} {os.getpid()}\\n")
    time.sleep(pause)
    summary.write(json.dumps({"total": sum(data), "rep": ctx["replicate"]}) * 200)
    return data, {"total": sum(data)}

def build(pause, versioned=False):
    out = Artifact("summary.json")
    plugin = ArtifactPlugin(root_dir="data", versioned=versioned, artifact_retention=10)
    return Experiment(source(), [produce(summary=out, pause=pause)], name="producer",
                      replicates=4, outputs=[out], plugins=[plugin],
                      treatments={"t": {"pause": pause}})

if __name__ == "__main__":
    strategy, pause, versioned = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
    result = build(pause, versioned).run(strategy=strategy, executor="process", max_workers=2)
    print(json.dumps({"version": result.version, "executed": result.executed}))
'''


@pytest.fixture
def workload(tmp_path):
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    log = tmp_path / "calls.log"
    env = {**os.environ, "CRYSTALLIZE_TEST_LOG": str(log), "PYTHONPATH": str(tmp_path)}

    def start(strategy="rerun", pause=0.0, versioned=False):
        return subprocess.Popen(
            [sys.executable, str(script), strategy, str(pause), "1" if versioned else "0"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )

    def finish(proc):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def calls():
        return log.read_text().splitlines() if log.exists() else []

    return start, finish, calls, log


def assert_store_consistent(root: Path) -> None:
    """Every version the store would trust as complete (its metadata.json sealed by its
    marker) really is: every artifact it lists is whole."""
    for exp_dir in root.iterdir():
        store = ExperimentStore(root, exp_dir.name)
        for number in store.version_numbers():
            try:
                version = store.read(number)
            except CorruptRecordError:  # unsealed (killed while publishing): never trusted
                continue
            if version is None or not version.complete:
                continue
            assert (version.path / MARKER).exists(), f"{version.path} marker missing"
            for cond in version.metadata.conditions:
                for paths in version.condition_record(cond).artifact_paths().values():
                    for rel in paths:
                        content = (version.path / rel).read_text()
                        assert content.endswith("}") and len(content) > 1000, f"partial {rel}"


def _kill_group(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def test_sigkill_at_any_instant_never_leaves_a_false_complete_version(workload, tmp_path):
    start, finish, calls, log = workload
    assert finish(start(pause=0.05))["version"] == 0
    store = ExperimentStore(tmp_path / "data", "producer")
    for delay in (0.05, 0.3, 0.6, 0.9, 1.4):
        proc = start(pause=0.05)
        time.sleep(delay)
        _kill_group(proc)
        assert_store_consistent(tmp_path / "data")
        newest = store.newest_complete()
        assert newest is not None  # the last complete version was never destroyed
    log.unlink(missing_ok=True)
    # a resume after the crashes reuses a complete version instead of computing again
    res = finish(start("resume", pause=0.05))
    assert res["executed"] is False and calls() == []
    assert_store_consistent(tmp_path / "data")


def test_crash_during_first_run_then_resume_reruns(workload, tmp_path):
    start, finish, calls, log = workload
    proc = start(pause=0.5)
    deadline = time.monotonic() + 30
    while len(calls()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    _kill_group(proc)
    assert ExperimentStore(tmp_path / "data", "producer").newest_complete() is None
    res = finish(start("resume"))
    assert res["executed"] is True
    assert_store_consistent(tmp_path / "data")


def test_two_concurrent_reruns_publish_distinct_versions(workload, tmp_path):
    start, finish, calls, _ = workload
    procs = [start(pause=0.1, versioned=True) for _ in range(2)]
    versions = sorted(finish(p)["version"] for p in procs)
    assert versions == [0, 1]
    assert_store_consistent(tmp_path / "data")
    assert len(calls()) == 16


def test_concurrent_resume_computes_once_and_second_reuses(workload, tmp_path):
    start, finish, calls, _ = workload
    procs = [start("resume", pause=0.3) for _ in range(2)]
    outs = [finish(p) for p in procs]
    assert sorted(o["executed"] for o in outs) == [False, True]
    assert outs[0]["version"] == outs[1]["version"] == 0
    assert len(calls()) == 8  # one computation of 2 conditions x 4 replicates


def test_killed_lock_holder_never_blocks_a_later_run(workload, tmp_path):
    start, finish, calls, _ = workload
    (tmp_path / "data" / "producer").mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from filelock import FileLock\n"
         "d = sys.argv[1]\n"
         "locks = [FileLock(d + '/.run.lock'), FileLock(d + '/.lock')]\n"
         "[l.acquire() for l in locks]\nprint('held', flush=True)\ntime.sleep(600)",
         str(tmp_path / "data" / "producer")],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.communicate()
    assert finish(start("resume"))["executed"] is True


def test_pruning_spares_a_version_another_process_reads(workload, tmp_path):
    start, finish, calls, _ = workload
    finish(start())
    reader = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path\n"
         "from crystallize.store import ExperimentStore, LeaseBook\n"
         "root = Path(sys.argv[1]); store = ExperimentStore(root, 'producer')\n"
         "ok = store.claim(LeaseBook(root), store.read(0))\n"
         "print('reading' if ok else 'gone', flush=True)\ntime.sleep(600)",
         str(tmp_path / "data")],
        stdout=subprocess.PIPE, text=True,
    )
    assert reader.stdout.readline().strip() == "reading"
    finish(start())  # versioned=False: would prune v0, but v0 is being read
    assert (tmp_path / "data/producer/v0/metadata.json").exists()
    reader.kill()
    reader.communicate()
    finish(start())  # the reader died: its lease is stale and v0, v1 go
    assert sorted(p.name for p in (tmp_path / "data/producer").glob("v*")) == ["v2"]


# -- the step cache -------------------------------------------------------------------------
def test_step_cache_computes_once_across_workers_and_runs(tmp_path):
    log = tmp_path / "cache.log"

    @data_source
    def src(ctx):
        return [1, 2, 3]

    @pipeline_step(cacheable=True)
    def expensive(data, ctx, factor=1):
        with open(log, "a") as f:
            f.write(f"{ctx['condition']}\n")
        time.sleep(0.2)
        return [x * factor for x in data], {"computed": 1}

    @pipeline_step()
    def total(data, ctx):
        return data, {"total": sum(data)}

    exp = Experiment(src(), [expensive(), total()], name="cached", replicates=4,
                     treatments=[Treatment("x2", {"factor": 2})])
    res = exp.run(executor="process", max_workers=2)
    # the step reads "factor" (injected from context): one entry per distinct factor value
    assert sorted(log.read_text().split()) == ["baseline", "x2"]
    assert res.metrics.treatments["x2"].metrics["total"] == [12] * 4
    assert res.metrics.baseline.metrics["computed"] == [1] * 4  # metrics are replayed on hits
    log.unlink()
    again = exp.run(executor="process", max_workers=2)
    assert not log.exists()
    assert again.metrics.treatments["x2"].metrics == res.metrics.treatments["x2"].metrics

    # a corrupt entry is recomputed and replaced
    entries = list(Path("data/.crystallize_cache").rglob("*.pkl"))
    assert len(entries) == 2
    for entry in entries:
        entry.write_bytes(b"garbage")
    third = exp.run(executor="inline")
    assert sorted(log.read_text().split()) == ["baseline", "x2"]
    assert third.metrics.baseline.metrics["total"] == [6] * 4


def test_a_lease_book_is_claimed_and_released_from_several_threads_at_once(tmp_path):
    # One experiment's version is allocated (claim) in a worker thread while another's publish
    # releases what it replaced and prunes (live_claims) in another: neither may see the set
    # of claims change under it (W5 with 2,000 nodes failed on "Set changed size").
    from crystallize.store import LeaseBook

    book = LeaseBook(tmp_path)
    errors: list[BaseException] = []
    done = threading.Event()

    def claim() -> None:
        try:
            for n in range(20_000):
                book.claim(f"e{n % 50}", n)
        finally:
            done.set()

    def release() -> None:
        try:
            while not done.is_set():
                book.release_replaced("e0", 0)
                LeaseBook.live_claims(tmp_path)
        except BaseException as exc:
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        threads = [threading.Thread(target=claim), threading.Thread(target=release)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
        book.close()
    assert errors == []
    assert "e49/v19999" in book.snapshot()  # nothing claimed was lost
