"""Configuring a graph for a run: one pure function for the scheduler, status and diagrams."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import anyio
import pytest

from crystallize import (
    Artifact,
    Experiment,
    ExperimentGraph,
    InlineExecutor,
    Treatment,
    data_source,
    pipeline_step,
)
from crystallize.running import configure, experiment_status
from crystallize.running._node import ExperimentRun, NodeInputs
from crystallize.store import LeaseBook


@data_source
def numbers(ctx):
    return [1, 2, 3]


@pipeline_step()
def passthrough(data, ctx):
    return data


@pipeline_step()
def read(data, ctx):
    return data


def _graph(tmp_path: Path) -> ExperimentGraph:
    out = Artifact("out.txt")

    @pipeline_step()
    def write(data, ctx, artifact: Artifact):
        artifact.write(b"x")
        return data

    producer = Experiment(
        numbers(), [write(artifact=out)], name="producer", outputs=[out],
        treatments=[Treatment("shared", {"k": 1}), Treatment("upstream_only", {"u": 1})],
    )
    consumer = Experiment(
        out, [read()], name="consumer",
        treatments=[Treatment("shared", {"k": 2}), Treatment("own", {"o": 1})],
    )
    return ExperimentGraph(producer, consumer)


def test_consumers_inherit_upstream_treatments_and_their_own_win(tmp_path: Path) -> None:
    graph = _graph(tmp_path)
    configured = configure(graph)
    assert list(configured) == ["producer", "consumer"]
    consumer = configured["consumer"]
    assert [t.name for t in consumer.treatments] == ["shared", "upstream_only", "own"]
    shared = next(t for t in consumer.treatments if t.name == "shared")
    assert shared is graph.experiments["consumer"].treatments[0]
    # The graph's own experiments are not touched.
    assert [t.name for t in graph.experiments["consumer"].treatments] == ["shared", "own"]


def test_graph_level_settings_override_every_experiment(tmp_path: Path) -> None:
    only = Treatment("only", {"k": 3})
    configured = configure(_graph(tmp_path), treatments=[only], replicates=4, strategy="rerun")
    for exp in configured.values():
        assert exp.treatments == [only]
        assert exp.replicates == 4
        assert exp.strategy == "rerun"


def test_status_configures_without_a_scheduler(tmp_path: Path) -> None:
    statuses = experiment_status(_graph(tmp_path))
    assert {name: s.state for name, s in statuses.items()} == {
        "producer": "never run", "consumer": "never run",
    }
    import crystallize.running._status as status_module

    source = ast.parse(Path(status_module.__file__).read_text())
    names = {n.id for n in ast.walk(source) if isinstance(n, ast.Name)}
    assert "Scheduler" not in names


@pytest.mark.anyio
async def test_a_node_runs_from_its_narrow_inputs_alone() -> None:
    # No scheduler: the node's run is driven by plain callables, which are all it may use.
    # strategy resume: status honours each experiment's strategy, and calls a "rerun" one stale
    graph = ExperimentGraph(Experiment(numbers(), [passthrough()], name="solo", replicates=2,
                                       strategy="resume"))
    exp = configure(graph)["solo"]
    events: list[str] = []
    books: dict[Path, LeaseBook] = {}
    executor = InlineExecutor()
    async with executor, anyio.create_task_group() as tg:
        def submit(name: str, job: Any, stream: Any) -> None:
            async def one() -> None:
                (outcome,) = await executor.run_batch([job])
                stream.send_nowait(outcome)
            tg.start_soon(one)

        inputs = NodeInputs(
            upstream_results={}, book=lambda root: books.setdefault(root, LeaseBook(root)),
            executor=executor, emit=lambda _, event: events.append(event.kind),
            submit=submit, discard=lambda paths: None,
        )
        result = await ExperimentRun(inputs, exp).execute()
    for book in books.values():
        book.close()
    assert events[-1] == "finished" and events.count("unit_finished") == 2
    assert not result.failed
    assert experiment_status(graph)["solo"].state == "complete"
