"""The process executor's workers: an experiment's pickle travels to a worker once, and again
whenever that worker no longer holds it; the round trip works on both event loops."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import anyio
import cloudpickle
import pytest

from crystallize import Experiment, ProcessExecutor, data_source, pipeline_step
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

    async def noted(self, key, blob, tasks):
        carried.append((key, blob is not None))
        return await ask(self, key, blob, tasks)

    monkeypatch.setattr(_pool._Worker, "_ask", noted)
    blobs = {name: cloudpickle.dumps(told(name)) for name in ("a", "b")}
    task = UnitTask("baseline", 0, 0, str(tmp_path), {})
    pool = _pool.WorkerPool(1, multiprocessing.get_context("fork"))
    pool.start()
    try:
        with anyio.fail_after(30):
            for name in ("a", "a", "b", "a"):
                packed = await pool.call(name, blobs[name], [task])
                assert unpack_outcome(packed[0]).metrics == {"who": name}
    finally:
        await pool.aclose()
    assert carried == [
        ("a", True), ("a", False),  # held since the first call
        ("b", True),  # the worker, full (stale, a), starts over with b
        ("a", False), ("a", True),  # the parent thought it still held a: asked, sent again
    ]


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
