"""The Dask executor on a real dask.distributed LocalCluster."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import anyio
import distributed
import pytest

from crystallize import (
    Artifact,
    DaskExecutor,
    Experiment,
    ExperimentGraph,
    Treatment,
    data_source,
    pipeline_step,
)


@data_source
def nums(ctx):
    return [1, 2, 3]


@pipeline_step()
def draw(data, ctx, summary: Artifact):
    import random

    value = random.random()
    summary.write(json.dumps({"value": value}))
    return data, {"value": value, "pid": os.getpid()}


@pipeline_step()
def read(data, ctx):
    return data, {"upstream": json.loads(data)["value"]}


def build():
    out = Artifact("summary.json")
    producer = Experiment(nums(), [draw(summary=out)], name="producer", replicates=3,
                          outputs=[out], treatments=[Treatment("t", {})])
    consumer = Experiment(out, [read()], name="consumer", replicates=3)
    return ExperimentGraph(producer, consumer)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_dask_runs_graph_with_same_results_as_inline(client):
    on_dask = build().run(executor=DaskExecutor(client))
    inline = build().run(executor="inline", strategy="rerun")
    for name in ("producer", "consumer"):
        a, b = on_dask[name].metrics, inline[name].metrics
        assert {k: v for k, v in a.baseline.metrics.items() if k != "pid"} == \
            {k: v for k, v in b.baseline.metrics.items() if k != "pid"}
    pids = set(on_dask["producer"].metrics.baseline.metrics["pid"])
    assert os.getpid() not in pids  # the units ran in the cluster's worker processes
    assert on_dask["consumer"].metrics.baseline.metrics["upstream"] == \
        on_dask["producer"].metrics.baseline.metrics["value"]


def test_dask_by_scheduler_address(client):
    out = Artifact("summary.json")
    exp = Experiment(nums(), [draw(summary=out)], name="addr", replicates=2, outputs=[out])
    res = exp.run(executor=DaskExecutor(address=client.scheduler.address))
    assert res.errors == {} and len(res.metrics.baseline.metrics["value"]) == 2


class SplitInProcess(DaskExecutor):
    """Trips without a cluster: a trip of several units dies as its worker would, a trip of
    one returns its outcome, tagged with the unit's experiment; the second experiment's lone
    trips come back last, as trips on a cluster come back in any order."""

    async def _trip(self, jobs, lost):
        from crystallize.running._executors import _Killed
        from crystallize.running._unit import UnitOutcome

        if len(jobs) > 1:
            raise _Killed(SimpleNamespace(allowed_failures=1, last_worker=SimpleNamespace(
                address="tcp://w")), ["tcp://w"])
        job = jobs[0]
        if job.experiment.name == "second":
            await anyio.sleep(0.05)
        return [UnitOutcome(job.task.condition, job.task.replicate,
                            metrics={"experiment": job.experiment.name})]


@pytest.mark.anyio
async def test_a_split_batch_of_several_experiments_keeps_each_outcome_at_its_unit():
    # A trip whose worker died is split into lone units; two experiments' units share their
    # conditions and replicates, so only their places tell them apart.
    from crystallize.running._executors import UnitJob
    from crystallize.running._unit import UnitTask

    first = Experiment(nums(), [read()], name="first", replicates=3)
    second = Experiment(nums(), [read()], name="second", replicates=3)
    jobs = [UnitJob(exp, UnitTask("baseline", rep, 0, "", {}))
            for rep in range(3) for exp in (second, first)]
    with anyio.fail_after(30):
        outcomes = await SplitInProcess(client=object())._run(jobs, [], 0)
    assert [(o.metrics["experiment"], o.replicate) for o in outcomes] == [
        (j.experiment.name, j.task.replicate) for j in jobs]
