"""Folder experiments (``config.yaml``): loading, running, and every mistake's message."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from crystallize import (
    Artifact,
    ConfigError,
    Experiment,
    ExperimentGraph,
    ExperimentInput,
)
from crystallize.config import load_experiment, load_graph

PRODUCER_CONFIG = """\
replicates: 2
datasource: load_numbers
steps:
  - produce_summary
outputs:
  summary:
    file_name: summary.json
    writer: dump_json
    loader: load_json
"""
PRODUCER_DATASOURCES = """\
from crystallize import data_source

@data_source
def load_numbers(ctx, n: int = 4):
    return [ctx["replicate"] * 10 + i for i in range(n)]
"""
PRODUCER_STEPS = """\
from crystallize import Artifact, pipeline_step

@pipeline_step()
def produce_summary(data, ctx, summary: Artifact):
    summary.write({"total": sum(data), "replicate": ctx["replicate"]})
    return data, {"total": sum(data)}
"""
OUTPUTS = """\
import json

def dump_json(obj):
    return json.dumps(obj)

def load_json(path):
    return json.loads(path.read_text())
"""
CONSUMER_CONFIG = """\
name: consumer
replicates: 2
datasource:
  producer_summary: producer#summary
steps:
  - inspect_summary
treatments:
  double: {factor: 2}
hypotheses:
  - {name: doubling, verifier: welch_t, metrics: score}
"""
CONSUMER_STEPS = """\
from crystallize import pipeline_step

@pipeline_step()
def inspect_summary(data, ctx, factor: int = 1):
    assert sorted(data) == ["producer_summary"], data
    summary = data["producer_summary"]
    return data, {"score": summary["total"] * factor, "read": summary["replicate"]}
"""
CONSUMER_VERIFIERS = """\
from statistics import fmean
from crystallize import verifier

@verifier
def welch_t(baseline, treatment, alpha: float = 0.05):
    diff = fmean(treatment["score"]) - fmean(baseline["score"])
    return {"p_value": 0.01 if diff else 1.0, "diff": diff}
"""


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The seeds' tutorial graph: producer publishes summary.json, consumer reads it."""
    root = tmp_path / "experiments"
    write(root / "producer", {
        "config.yaml": PRODUCER_CONFIG, "datasources.py": PRODUCER_DATASOURCES,
        "steps.py": PRODUCER_STEPS, "outputs.py": OUTPUTS,
    })
    write(root / "consumer", {
        "config.yaml": CONSUMER_CONFIG, "steps.py": CONSUMER_STEPS,
        "verifiers.py": CONSUMER_VERIFIERS,
    })
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


# -- loading and running ----------------------------------------------------------------------
def test_graph_from_consumer_config_runs_prerequisites_in_worker_processes(root: Path) -> None:
    graph = ExperimentGraph.from_yaml(root / "consumer" / "config.yaml")
    assert graph.topological_order() == ["producer", "consumer"]

    results = graph.run(executor="process", max_workers=2)

    assert results["producer"].metrics.baseline.metrics["total"] == [6, 46]
    consumer = results["consumer"].metrics
    # Each replicate received {alias: load_json(...)} of the producer's same replicate.
    assert consumer.baseline.metrics["score"] == [6, 46]
    assert consumer.baseline.metrics["read"] == [0, 1]
    assert consumer.treatments["double"].metrics["score"] == [12, 92]
    assert results["consumer"].errors == {}
    hypothesis = results["consumer"].get_hypothesis("doubling")
    assert hypothesis is not None
    assert hypothesis.results["double"] == {"p_value": 0.01, "diff": 26.0}
    assert hypothesis.ranking == ["double"]


def test_consumer_reuses_the_producers_artifact_object(root: Path) -> None:
    producer, consumer = load_graph(root / "consumer")
    assert isinstance(consumer.datasource, ExperimentInput)
    (art,) = consumer.consumed_artifacts()
    assert art is producer.outputs["summary"]
    assert art.producer == "producer" and art.name == "summary.json"


def test_root_loads_every_experiment_upstream_first(root: Path) -> None:
    write(root / "lonely", {
        "config.yaml": "steps: [alone]\n",
        "steps.py": "from crystallize import pipeline_step\n\n@pipeline_step()\n"
        "def alone(data, ctx):\n    return data, {'x': 1}\n",
    })
    names = [e.name for e in load_graph(root)]
    assert sorted(names) == ["consumer", "lonely", "producer"]
    assert names.index("producer") < names.index("consumer")


def test_load_experiment_returns_only_that_experiment_and_reads_upstream_from_store(
    root: Path,
) -> None:
    ExperimentGraph.from_yaml(root).run(executor="inline")
    consumer = Experiment.from_yaml(root / "consumer")
    assert consumer.name == "consumer"
    result = consumer.run(executor="inline")
    assert result.metrics.baseline.metrics["score"] == [6, 46]


@pytest.mark.parametrize(
    ("datasource", "expected"),
    [
        ("datasource: load_numbers", [0, 1, 2, 3]),
        ("datasource: {numbers: load_numbers}", [0, 1, 2, 3]),  # single plain entry: as is
        ("datasource: {a: load_numbers, b: load_numbers}",
         {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}),
        ("datasource: producer#summary", {"total": 6, "replicate": 0}),
        ("", None),
    ],
)
def test_datasource_shapes(root: Path, datasource: str, expected: object) -> None:
    write(root / "probe", {
        "config.yaml": f"{datasource}\nsteps: [probe]\n",
        "datasources.py": "def load_numbers(ctx):\n    return [0, 1, 2, 3]\n",
        "steps.py": "from crystallize import pipeline_step\n\n@pipeline_step()\n"
        "def probe(data, ctx):\n    return data, {'data': data}\n",
    })
    results = ExperimentGraph.from_yaml(root / "probe").run(executor="inline")
    assert results["probe"].metrics.baseline.metrics["data"] == [expected]


def test_output_alias_given_as_a_step_parameter_value(root: Path) -> None:
    write(root / "writer", {
        "config.yaml": "steps:\n  - save: {target: report}\noutputs:\n  report: report.txt\n",
        "steps.py": "from crystallize import Artifact, pipeline_step\n\n@pipeline_step()\n"
        "def save(data, ctx, target: Artifact):\n    target.write('hello')\n    return data\n",
    })
    (exp,) = load_graph(root / "writer")
    assert isinstance(exp.pipeline.steps[0].params["target"], Artifact)
    result = exp.run(executor="inline")
    path = result.artifact_path("report.txt")
    assert path.read_text() == "hello"
    assert path.name == "baseline~r0~SaveStep~report.txt"


def test_two_experiments_with_their_own_steps_py_run_in_worker_processes(tmp_path: Path) -> None:
    for name, value in (("a", 1), ("b", 2)):
        write(tmp_path / "root" / name, {
            "config.yaml": "steps: [measure]\n",
            "steps.py": "from crystallize import pipeline_step\n\n"
            f"VALUE = {value}\n\n@pipeline_step()\n"
            "def measure(data, ctx):\n    return data, {'value': VALUE}\n",
        })
    results = ExperimentGraph.from_yaml(tmp_path / "root").run(executor="process", max_workers=2)
    assert results["a"].metrics.baseline.metrics["value"] == [1]
    assert results["b"].metrics.baseline.metrics["value"] == [2]


def test_reloading_picks_up_edited_step_code(tmp_path: Path) -> None:
    folder = write(tmp_path / "exp", {
        "config.yaml": "steps: [measure]\n",
        "steps.py": "from crystallize import pipeline_step\n\n@pipeline_step()\n"
        "def measure(data, ctx):\n    return data, {'v': 1}\n",
    })
    assert load_experiment(folder).run(executor="inline").metrics.baseline.metrics["v"] == [1]
    # Same size and, most likely, the same mtime second: a bytecode cache would miss the edit.
    edit(folder / "steps.py", "{'v': 1}", "{'v': 2}")
    assert load_experiment(folder).run(executor="inline").metrics.baseline.metrics["v"] == [2]


def test_relative_imports_and_extra_keys(tmp_path: Path) -> None:
    folder = write(tmp_path / "exp", {
        "config.yaml": """\
            description: extra keys
            initial_ctx: {offset: 5}
            plugins:
              - SeedPlugin: {seed: 7}
              - ArtifactPlugin: {root_dir: store, versioned: true}
            steps: [measure]
            """,
        "helpers.py": "def bump(x):\n    return x + 1\n",
        "steps.py": "from crystallize import pipeline_step\nfrom .helpers import bump\n\n"
        "@pipeline_step()\ndef measure(data, ctx, offset: int = 0):\n"
        "    return data, {'v': bump(offset)}\n",
    })
    exp = load_experiment(folder)
    assert exp.description == "extra keys"
    result = exp.run(executor="process", max_workers=1)
    assert result.metrics.baseline.metrics["v"] == [6]
    assert (tmp_path / "store" / "exp" / "v0" / "metadata.json").exists()


# -- mistakes ---------------------------------------------------------------------------------
Mutation = Callable[[Path], None]


def _set(relative: str, old: str, new: str) -> Mutation:
    return lambda root: edit(root / relative, old, new)


def _append(relative: str, text: str) -> Mutation:
    return lambda root: (root / relative).write_text((root / relative).read_text() + text)


def _delete(relative: str) -> Mutation:
    return lambda root: (root / relative).unlink()


CONSUMER = "consumer/config.yaml"
PRODUCER = "producer/config.yaml"

MISTAKES = {
    "unknown step": (
        _set(CONSUMER, "- inspect_summary", "- inspect_sumary"),
        ["consumer/config.yaml", "steps[0]", "'inspect_sumary'", "did you mean 'inspect_summary'",
         "line 6"],
    ),
    "unknown datasource": (
        _set(PRODUCER, "datasource: load_numbers", "datasource: load_numbrs"),
        ["producer/config.yaml", "'datasource'", "did you mean 'load_numbers'"],
    ),
    "unknown writer": (
        _set(PRODUCER, "writer: dump_json", "writer: dump_jsn"),
        ["producer/config.yaml", "outputs.summary.writer", "did you mean 'dump_json'"],
    ),
    "unknown loader": (
        _set(PRODUCER, "loader: load_json", "loader: loads_json"),
        ["producer/config.yaml", "outputs.summary.loader", "did you mean 'load_json'"],
    ),
    "unknown verifier": (
        _set(CONSUMER, "verifier: welch_t", "verifier: welch"),
        ["consumer/config.yaml", "hypotheses[0].verifier", "did you mean 'welch_t'"],
    ),
    "missing experiment": (
        _set(CONSUMER, "producer#summary", "producr#summary"),
        ["consumer/config.yaml", "datasource.producer_summary", "'producr'",
         "did you mean 'producer'"],
    ),
    "missing output": (
        _set(CONSUMER, "producer#summary", "producer#sumary"),
        ["consumer/config.yaml", "datasource.producer_summary", "no output 'sumary'",
         "did you mean 'summary'"],
    ),
    "bad reference": (
        _set(CONSUMER, "producer#summary", "producer#"),
        ["consumer/config.yaml", "datasource.producer_summary", "<experiment>#<output alias>"],
    ),
    "output no step writes": (
        _append(PRODUCER, "  extra: {file_name: extra.txt}\n"),
        ["producer/config.yaml", "outputs.extra", "written by no step", "extra: Artifact"],
    ),
    "artifact parameter without output": (
        _set(PRODUCER, "  summary:\n", "  summry:\n"),
        ["producer/config.yaml", "steps[0]", "no output called 'summary'",
         "did you mean 'summry'"],
    ),
    "artifact parameter given an unknown alias": (
        _set(PRODUCER, "- produce_summary", "- produce_summary: {summary: sumary}"),
        ["producer/config.yaml", "steps[0].produce_summary.summary", "'sumary'",
         "did you mean 'summary'"],
    ),
    "malformed yaml": (
        _set(CONSUMER, "double: {factor: 2}", "double: {factor: 2"),
        ["consumer/config.yaml", "malformed YAML", "line ", "column "],
    ),
    "wrong type": (
        _set(CONSUMER, "replicates: 2", 'replicates: "three"'),
        ["consumer/config.yaml", "'replicates'", "'three'", "replicates: 3"],
    ),
    "unknown top-level key": (
        _set(CONSUMER, "treatments:", "treatmets:"),
        ["consumer/config.yaml", "'treatmets'", "did you mean 'treatments'"],
    ),
    "duplicate key": (
        _append(CONSUMER, "replicates: 5\n"),
        ["consumer/config.yaml", "'replicates'", "given twice"],
    ),
    "missing steps": (
        _set(CONSUMER, "steps:\n  - inspect_summary\n", ""),
        ["consumer/config.yaml", "'steps'", "no steps", "steps.py"],
    ),
    "missing steps.py": (
        _delete("consumer/steps.py"),
        ["consumer/config.yaml", "steps[0]", "steps.py does not exist", "Create steps.py"],
    ),
    "unknown step parameter": (
        _set(CONSUMER, "- inspect_summary", "- inspect_summary: {factr: 3}"),
        ["consumer/config.yaml", "steps[0].inspect_summary.factr", "did you mean 'factor'"],
    ),
    "undecorated step": (
        _set("consumer/steps.py", "@pipeline_step()\n", ""),
        ["consumer/config.yaml", "steps[0]", "not a step", "@pipeline_step()"],
    ),
    "syntax error in steps.py": (
        _append("consumer/steps.py", "def broken(:\n"),
        ["consumer/steps.py", "syntax error at line 8"],
    ),
    "import error in outputs.py": (
        _append("producer/outputs.py", "import not_a_real_module_xyz\n"),
        ["producer/outputs.py", "ModuleNotFoundError", "not_a_real_module_xyz"],
    ),
    "bad treatment": (
        _set(CONSUMER, "double: {factor: 2}", "double: 2"),
        ["consumer/config.yaml", "treatments.double", "factor: 2"],
    ),
    "unknown hypothesis key": (
        _set(CONSUMER, "metrics: score", "metric: score"),
        ["consumer/config.yaml", "hypotheses[0].metric", "did you mean 'metrics'"],
    ),
    "unknown plugin": (
        _append(CONSUMER, "plugins: [LogingPlugin]\n"),
        ["consumer/config.yaml", "plugins[0]", "did you mean 'LoggingPlugin'"],
    ),
    "reserved context key": (
        _append(CONSUMER, "initial_ctx: {seed: 3}\n"),
        ["consumer/config.yaml", "initial_ctx.seed", "SeedPlugin"],
    ),
    "reserved treatment key": (
        _set(CONSUMER, "double: {factor: 2}", "double: {replicate: 2}"),
        ["consumer/config.yaml", "treatments.double.replicate", "reserved"],
    ),
    "duplicate experiment names": (
        _set(CONSUMER, "name: consumer", "name: producer"),
        ["config.yaml", "'name'", "also used by", "unique"],
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_mistakes_are_reported_before_anything_runs(
    root: Path, tmp_path: Path, mistake: str
) -> None:
    mutate, expected = MISTAKES[mistake]
    mutate(root)
    with pytest.raises(ConfigError) as info:
        ExperimentGraph.from_yaml(root / "consumer").run(executor="inline")
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} missing from: {message}"
    assert info.value.file is not None
    assert not (tmp_path / "data").exists()


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_graph(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.yaml"):
        load_graph(tmp_path / "empty")
    with pytest.raises(ConfigError, match="no config.yaml"):
        load_experiment(tmp_path / "empty")


def test_cycle_between_folders(tmp_path: Path) -> None:
    for name, other in (("a", "b"), ("b", "a")):
        write(tmp_path / "root" / name, {
            "config.yaml": f"datasource: {{x: {other}#out}}\nsteps: [step]\n"
            "outputs: {out: out.txt}\n",
            "steps.py": "from crystallize import Artifact, pipeline_step\n\n@pipeline_step()\n"
            "def step(data, ctx, out: Artifact):\n    out.write('x')\n    return data\n",
        })
    for target in (tmp_path / "root", tmp_path / "root" / "a" / "config.yaml"):
        with pytest.raises(ConfigError) as info:
            ExperimentGraph.from_yaml(target)
        message = str(info.value)
        assert "cycle" in message and "a -> b -> a" in message
        assert "b/config.yaml" in message and "datasource.x" in message


def test_self_reference_is_a_cycle(tmp_path: Path) -> None:
    write(tmp_path / "root" / "a", {
        "config.yaml": "datasource: a#out\nsteps: [step]\noutputs: {out: out.txt}\n",
        "steps.py": "from crystallize import Artifact, pipeline_step\n\n@pipeline_step()\n"
        "def step(data, ctx, out: Artifact):\n    return data\n",
    })
    with pytest.raises(ConfigError, match="a -> a"):
        load_graph(tmp_path / "root")
