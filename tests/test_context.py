"""The context a step sees is a plain mapping: it holds its values, not the engine."""

from __future__ import annotations

import gc

import pytest

from crystallize import (
    Artifact,
    Experiment,
    ExperimentGraph,
    FrozenContext,
    MissingArtifactError,
    data_source,
    pipeline_step,
)


@data_source
def numbers(ctx):
    return [1, 2, 3]


@pipeline_step()
def inspect(data, ctx):
    foreign = sorted({
        type(obj).__module__ for obj in gc.get_referents(ctx)
        if not isinstance(obj, type) and type(obj).__module__ != "builtins"
    })
    return data, {"foreign": foreign}


@pytest.mark.parametrize("executor", ["inline", "thread", "process"])
def test_the_context_refers_to_nothing_but_its_own_values(executor: str) -> None:
    result = Experiment(numbers(), [inspect()], name="ctx", replicates=2).run(executor=executor)
    assert result.metrics.baseline.metrics["foreign"] == [[], []]


def test_an_artifact_read_outside_a_unit_says_so() -> None:
    with pytest.raises(RuntimeError, match="only be fetched inside a running experiment"):
        Artifact("x.txt").fetch(FrozenContext())


def test_a_consumer_still_reads_its_upstream_artifact_through_the_running_unit() -> None:
    out = Artifact("n.txt")

    @pipeline_step()
    def write(data, ctx, artifact: Artifact):
        artifact.write(str(sum(data) + ctx["replicate"]))
        return data

    @pipeline_step()
    def read(data, ctx):
        return data, {"read": int(data)}

    producer = Experiment(numbers(), [write(artifact=out)], name="p", replicates=2, outputs=[out])
    consumer = Experiment(out, [read()], name="c", replicates=2)
    results = ExperimentGraph(producer, consumer).run(executor="thread")
    assert results["c"].metrics.baseline.metrics["read"] == [6, 7]


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_missing_upstream_artifact_names_its_producer_and_path(executor: str) -> None:
    out = Artifact("n.txt")

    @pipeline_step()
    def flaky(data, ctx, artifact: Artifact):
        if ctx["replicate"] == 1:
            raise ValueError("replicate 1 writes nothing")
        artifact.write(b"x")
        return data

    producer = Experiment(numbers(), [flaky(artifact=out)], name="p", outputs=[out],
                          replicates=2)
    consumer = Experiment(out, [inspect()], name="c", replicates=2)
    results = ExperimentGraph(producer, consumer).run(executor=executor)
    (error,) = results["c"].errors.values()
    assert isinstance(error, MissingArtifactError) and isinstance(error, FileNotFoundError)
    assert error.producer == "p"
    assert error.path is not None and error.path.name == "baseline~r1~*~n.txt"
    assert str(error.path) in str(error)
