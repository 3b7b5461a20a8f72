"""Graph diagrams and the store status they show."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import graphviz
import pytest

import crystallize
from crystallize import ExperimentGraph
from crystallize.render import build_digraph, write_diagram
from crystallize.running import experiment_status

REPO = Path(crystallize.__file__).resolve().parents[1]


@pytest.fixture
def dot() -> str:
    """The real Graphviz ``dot``: the README's set-up and .ci/run install it."""
    path = shutil.which("dot")
    assert path, "Graphviz's dot is not on PATH: apt-get install graphviz (or brew install ...)"
    return path


@pytest.fixture
def dag(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "examples" / "dag", tmp_path / "dag")
    return tmp_path / "dag"


def test_status_follows_the_resume_decision(dag: Path) -> None:
    def states() -> dict[str, str]:
        graph = ExperimentGraph.from_yaml(dag / "consumer")
        return {n: s.describe() for n, s in experiment_status(graph).items()}

    assert states() == {"producer": "never run", "consumer": "never run"}
    ExperimentGraph.from_yaml(dag).run(executor="inline")
    assert states() == {"producer": "complete (v0)", "consumer": "complete (v0)"}

    config = dag / "producer" / "config.yaml"
    config.write_text(config.read_text() + "treatments:\n  wide: {n: 50}\n")
    status = experiment_status(ExperimentGraph.from_yaml(dag / "consumer"))
    assert status["producer"].state == "stale"
    assert "wide: new treatment" in status["producer"].reason
    # The consumer inherits the new treatment: only that condition's units would run.
    assert status["consumer"].state == "stale"
    assert status["consumer"].reason == "3 of 9 unit(s) run: wide: new treatment; 6 reused from v0"


def test_dot_renders_an_svg_with_names_and_state(dag: Path, tmp_path: Path, dot: str) -> None:
    ExperimentGraph.from_yaml(dag).run(executor="inline")
    digraph = ExperimentGraph.visualize_from_yaml(dag / "consumer", tmp_path / "out" / "graph.svg")
    assert isinstance(digraph, graphviz.Digraph)
    svg = (tmp_path / "out" / "graph.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for text in ("producer", "consumer", "replicates: 3", "treatments: double",
                 "complete (v0)", "summary.json"):
        assert text in svg, text


def test_suffix_chooses_the_format(dag: Path, tmp_path: Path) -> None:
    digraph = build_digraph(ExperimentGraph.from_yaml(dag), show_state=False)
    path, rendered = write_diagram(digraph, tmp_path / "graph.dot")
    assert (path, rendered) == (tmp_path / "graph.dot", True)
    assert "producer -> consumer" in path.read_text()
    if shutil.which("dot"):
        path, rendered = write_diagram(digraph, tmp_path / "graph", "png")
        assert path == tmp_path / "graph.png" and rendered
        assert path.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="unknown diagram format"):
        write_diagram(digraph, tmp_path / "graph", "nope")


def test_without_dot_returns_the_digraph_and_writes_dot_source(dag: Path, tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import shutil, sys
        from crystallize import ExperimentGraph
        assert shutil.which("dot") is None
        digraph = ExperimentGraph.visualize_from_yaml(sys.argv[1], "graph.svg")
        print(type(digraph).__name__)
    """)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty),
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                         if p)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(dag)], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Digraph"
    assert not (tmp_path / "graph.svg").exists()
    source = (tmp_path / "graph.dot").read_text()
    assert source.startswith("digraph") and "producer -> consumer" in source
    assert "never run" in source
    hint = [line for line in result.stderr.splitlines() if "graphviz" in line.lower()]
    assert len(hint) == 1 and "apt-get install graphviz" in hint[0]
