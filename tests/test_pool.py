"""The process executor's workers: an experiment's pickle travels to a worker once, and again
whenever that worker no longer holds it; the round trip works on both event loops."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from pathlib import Path

import anyio
import cloudpickle
import pytest

from crystallize import (
    Experiment,
    ExperimentFailedError,
    ProcessExecutor,
    data_source,
    pipeline_step,
)
from crystallize.running import _pool, _worker
from crystallize.running._unit import UnitTask
from crystallize.running._worker import unpack_outcome


@data_source
def nothing(ctx):
    return None


@pipeline_step()
def tell(data, ctx, who=""):
    return data, {"who": who}


def told(name: str) -> Experiment:
    return Experiment(nothing(), [tell(who=name)], name=name, replicates=1)


@pytest.mark.anyio
async def test_a_worker_gets_each_experiment_once_and_again_when_it_forgot_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker holds two experiments at most, and starts with a stale one the parent does
    # not know of (as left over from earlier work): it forgets before the parent expects.
    monkeypatch.setattr(_worker, "KEPT_EXPERIMENTS", 2)
    monkeypatch.setitem(_worker._SPECS, "stale", told("stale"))
    carried: list[tuple[str, bool]] = []
    ask = _pool._Worker._ask

    async def noted(self, groups):
        carried.extend((key, blob is not None) for key, blob, _ in groups)
        return await ask(self, groups)

    monkeypatch.setattr(_pool._Worker, "_ask", noted)
    blobs = {name: cloudpickle.dumps(told(name)) for name in ("a", "b")}
    task = UnitTask("baseline", 0, 0, str(tmp_path), {})
    pool = _pool.WorkerPool(1, multiprocessing.get_context("fork"))
    pool.start()
    try:
        with anyio.fail_after(30):
            for name in ("a", "a", "b", "a"):
                packed = await pool.call([(name, blobs[name], [task])])
                assert unpack_outcome(packed[0]).metrics == {"who": name}
    finally:
        await pool.aclose()
    assert carried == [
        ("a", True), ("a", False),  # held since the first call
        ("b", True),  # the worker, full (stale, a), starts over with b
        ("a", False), ("a", True),  # the parent thought it still held a: asked, sent again
    ]


@pytest.mark.anyio
async def test_one_trip_runs_units_of_several_experiments_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker holds one experiment at most: unpickling b makes it forget a, which the
    # parent sends without its pickle (it is held) and which must still run.
    monkeypatch.setattr(_worker, "KEPT_EXPERIMENTS", 1)
    blobs = {name: cloudpickle.dumps(told(name)) for name in ("a", "b")}
    tasks = [UnitTask("baseline", r, r, str(tmp_path), {}) for r in range(2)]
    pool = _pool.WorkerPool(1, multiprocessing.get_context("fork"))
    pool.start()
    try:
        with anyio.fail_after(30):
            await pool.call([("a", blobs["a"], tasks[:1])])
            packed = await pool.call([("b", blobs["b"], tasks), ("a", blobs["a"], tasks[:1])])
    finally:
        await pool.aclose()
    outcomes = [unpack_outcome(p) for p in packed]
    assert [(o.metrics["who"], o.replicate) for o in outcomes] == [("b", 0), ("b", 1), ("a", 0)]


def test_an_edited_experiment_runs_as_edited_on_the_same_executor() -> None:
    executor = ProcessExecutor(max_workers=1)
    first = told("same").run(executor=executor)
    second = Experiment(nothing(), [tell(who="edited")], name="same", replicates=1).run(
        executor=executor)
    assert first.metrics.baseline.metrics["who"] == ["same"]
    assert second.metrics.baseline.metrics["who"] == ["edited"]


def test_an_experiment_and_outcomes_larger_than_a_socket_buffer_travel_whole() -> None:
    ballast = bytes(range(256)) * 8192  # 2 MiB inside the experiment's pickle

    @pipeline_step()
    def echo(data, ctx):
        return data, {"size": len(ballast), "tail": ballast[-3:], "back": ballast[:300_000]}

    result = Experiment(nothing(), [echo()], name="big", replicates=3).run(
        executor=ProcessExecutor(max_workers=2, batching=False))
    metrics = result.metrics.baseline.metrics
    assert metrics["size"] == [len(ballast)] * 3 and metrics["tail"] == [b"\xfd\xfe\xff"] * 3
    assert metrics["back"] == [ballast[:300_000]] * 3


@data_source
def two(ctx):
    return 2


def _square(x):
    return x * x


@pipeline_step()
def in_a_pool_of_its_own(data, ctx):
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return data, {"squared": pool.apply(_square, (data + ctx["replicate"],))}


def test_a_step_can_start_worker_processes_of_its_own() -> None:
    result = Experiment(two(), [in_a_pool_of_its_own()], name="nested", replicates=2).run(
        executor=ProcessExecutor(max_workers=2))
    assert result.metrics.baseline.metrics["squared"] == [4, 9]


@pipeline_step()
def die_leaving_a_child(data, ctx):
    child = os.fork()
    if child == 0:  # holds on to everything it inherited until the test ends it
        time.sleep(120)
        os._exit(0)
    Path(f"child-{child}").touch()
    os._exit(3)  # the OOM killer taking the worker, but not its children


def test_a_worker_that_dies_leaving_a_child_behind_fails_only_its_unit(tmp_path: Path) -> None:
    try:
        with pytest.raises(ExperimentFailedError) as failed:
            Experiment(two(), [die_leaving_a_child()], name="orphans", replicates=1).run(
                executor=ProcessExecutor(max_workers=1))
        result = failed.value.results["orphans"]
        assert "worker process died" in str(result.errors["baseline_rep_0"])
    finally:
        for mark in tmp_path.glob("child-*"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(mark.name.split("-")[1]), signal.SIGKILL)


@pipeline_step()
def where(data, ctx):
    return data, {"pid": os.getpid()}


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_workers_started_by_spawn_or_a_forkserver_run_units(method: str) -> None:
    # A forkserver, not this process, is the parent of the workers it starts: a worker must
    # not take that for the death of the process that asked for it.
    exp = Experiment(nothing(), [where()], name=f"started_by_{method}", replicates=2)
    executor = ProcessExecutor(2, multiprocessing.get_context(method))
    result = exp.run(executor=executor, strategy="rerun")
    assert result.errors == {}
    pids = result.metrics.baseline.metrics["pid"]
    assert len(pids) == 2 and os.getpid() not in pids
