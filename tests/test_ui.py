"""The terminal UI (SPEC §6): driven through Textual's pilot, and once in a real terminal."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static, Tree

import crystallize
from crystallize.config import load_experiment
from crystallize.ui import CrystallizeApp, RunScreen

from terminal import run_in_terminal

REPO = Path(crystallize.__file__).resolve().parents[1]
SIZE = (160, 50)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"  # Textual runs on asyncio only


def labels(tree: Tree) -> list[str]:
    def walk(node) -> list[str]:
        return [str(node.label)] + [label for child in node.children for label in walk(child)]
    return walk(tree.root)


def rows(screen: RunScreen) -> list[list[str]]:
    table = screen.query_one("#units", DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def finish_run(pilot, screen: RunScreen) -> None:
    await pilot.press("r")
    deadline = time.monotonic() + 120
    await pilot.pause()
    while screen.running and time.monotonic() < deadline:
        await pilot.pause(0.05)
    assert not screen.running, "the run did not finish"


async def open_run_screen(pilot, app: CrystallizeApp, name: str) -> RunScreen:
    tree = app.screen.query_one("#tree", Tree)
    while tree.cursor_node is None or str(tree.cursor_node.label).split()[-1] != name:
        await pilot.press("down")
        await pilot.pause()
    await pilot.press("enter")
    await pilot.pause()
    assert isinstance(app.screen, RunScreen)
    return app.screen


async def test_tree_groups_experiments_by_folder_and_marks_graph_experiments(root: Path) -> None:
    (root / "solo" / "alone").mkdir(parents=True)
    shutil.copy(root / "dag" / "producer" / "config.yaml", root / "solo" / "alone")
    for name in ("datasources.py", "steps.py", "outputs.py"):
        shutil.copy(root / "dag" / "producer" / name, root / "solo" / "alone")
    (root / "solo" / "alone" / "config.yaml").write_text(
        (root / "dag" / "producer" / "config.yaml").read_text().replace("name: producer",
                                                                        "name: alone"))
    app = CrystallizeApp(root)
    async with app.run_test(size=SIZE) as pilot:
        tree = app.screen.query_one("#tree", Tree)
        assert labels(tree) == ["experiments", "experiments/dag", "📈 consumer", "producer",
                                "experiments/solo", "alone"]
        await pilot.press("down", "down", "down")  # the producer
        await pilot.pause()
        assert str(tree.cursor_node.label) == "producer"
        details = str(app.screen.query_one("#details", Static).render())
        assert "producer" in details and "never run" in details and "summary" in details
        assert not app.screen.query_one("#errors").display


async def test_new_experiment_wires_chosen_upstream_outputs(root: Path) -> None:
    app = CrystallizeApp(root)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.pause()
        await pilot.press(*"bad name")
        await pilot.click("#create")
        await pilot.pause()
        problem = str(app.screen.query_one("#problem", Static).render())
        assert "invalid experiment name" in problem
        assert not (root / "dag" / "bad name").exists()

        app.screen.query_one("#name").value = "analysis"
        await pilot.click("#use")  # Use outputs from other experiments
        await pilot.pause()
        outputs = app.screen.query_one("#outputs")
        assert outputs.display
        outputs.focus()
        await pilot.press("space")  # choose the first (only) output: producer#summary
        assert outputs.selected == ["producer#summary"]
        await pilot.click("#create")
        await pilot.pause()
        await pilot.pause()
        config = root / "dag" / "analysis" / "config.yaml"  # next to its upstream
        assert "producer_summary: producer#summary" in config.read_text()
        exp = load_experiment(config)
        assert [(a.producer, a.name) for a in exp.consumed_artifacts()] == [
            ("producer", "summary.json")]
        tree = app.screen.query_one("#tree", Tree)
        assert "📈 analysis" in labels(tree)
        assert str(tree.cursor_node.label) == "📈 analysis"


async def test_run_screen_runs_prerequisites_first_and_toggles_caching(root: Path) -> None:
    app = CrystallizeApp(root)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_run_screen(pilot, app, "consumer")
        assert [r[:2] for r in rows(screen)] == [
            ["🔒", "producer"], ["", "  └ produce_summary"],
            ["🔒", "consumer"], ["", "  └ inspect_summary"],
        ]
        assert [r[3] for r in rows(screen)][::2] == ["never run", "never run"]

        await finish_run(pilot, screen)
        states = [r[3] for r in rows(screen)]
        assert states[0] == "done -> v0" and states[2] == "done -> v0"
        assert rows(screen)[2][2].endswith("6/6")  # 2 conditions x 3 replicates
        log = "\n".join(str(line.text) for line in screen.query_one("#log").lines)
        assert "consumer [double] score=" in log
        assert "consumer: hypothesis doubling_changes_score: double: p_value=" in log
        assert (Path("data") / "consumer" / "v0" / "metadata.json").exists()

        await finish_run(pilot, screen)  # both cached: resumed, nothing recomputed
        assert [r[3] for r in rows(screen)][::2] == ["🔒 cached, resumed v0"] * 2

        await pilot.press("l")  # the cursor is on the producer: no longer cached
        assert rows(screen)[0][0] == ""
        await pilot.press("down", "l")  # its step: now cached by the step cache
        assert rows(screen)[1][0] == "🔒"
        assert screen.graph.experiments["producer"].pipeline.steps[0].cacheable
        await finish_run(pilot, screen)
        states = [r[3] for r in rows(screen)]
        # the producer reran, but wrote identical artifacts: its consumer stays reused
        assert states[0] == "done -> v1" and states[2] == "🔒 cached, resumed v0"
        assert not screen.query_one("#errors").display

        await pilot.press("n")  # the tree's keys do nothing here
        await pilot.pause()
        assert isinstance(app.screen, RunScreen)

        await pilot.press("escape")  # back to the tree, which shows the new state
        await pilot.pause()
        await pilot.pause()
        assert not isinstance(app.screen, RunScreen)
        assert str(app.screen.query_one("#tree", Tree).cursor_node.label) == "📈 consumer"
        assert "complete (v0)" in str(app.screen.query_one("#details", Static).render())


async def test_error_panels_list_broken_configs_and_missing_paths(root: Path) -> None:
    steps = root / "dag" / "producer" / "steps.py"
    steps.write_text(steps.read_text().replace("summary.write(stats)", "pass"))
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("steps:\n  - no_such_step\n")
    (broken / "steps.py").write_text(
        "from crystallize import pipeline_step\n\n@pipeline_step()\n"
        "def some_step(data, ctx):\n    return data\n")
    app = CrystallizeApp(root)
    async with app.run_test(size=SIZE) as pilot:
        panel = app.screen.query_one("#errors", Static)
        assert panel.display
        text = " ".join(str(panel.render()).split())
        assert "broken/config.yaml" in text and "steps[0]" in text and "no_such_step" in text

        screen = await open_run_screen(pilot, app, "consumer")
        await finish_run(pilot, screen)
        errors = screen.query_one("#errors", Static)
        assert errors.display
        text = " ".join(str(errors.render()).split())
        # The producer's units fail for the output they did not write, naming its path.
        assert "producer:" in text and "missing path:" in text and "summary.json" in text
        assert rows(screen)[0][3].startswith("failed")
        assert rows(screen)[2][3].startswith("skipped: upstream producer failed")

        await finish_run(pilot, screen)  # the panel shows this run's errors, not the last one's
        again = " ".join(str(errors.render()).split())
        assert again.count("[baseline rep 0]") == text.count("[baseline rep 0]") == 1


def test_ui_runs_a_graph_in_a_real_terminal(root: Path) -> None:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    down, enter, escape = b"\x1b[B", b"\r", b"\x1b"
    code, text = run_in_terminal(
        [sys.executable, "-m", "crystallize.cli"], cwd=root,
        env={**os.environ, "PYTHONPATH": path, "TERM": "xterm-256color"}, size=(40, 140),
        script=[(b"producer", down + down), (b"never run", enter),  # open the consumer's run
                (b"Toggle caching", b"r"), (b"6/6", escape), (b"complete (v0)", b"q")],
        timeout=90,
    )
    assert code == 0, text[-3000:]
    assert "📈" in text and "3/3" in text
    # the run happened in worker processes forked under the UI, and was stored
    assert (root / "data" / "consumer" / "v0" / "metadata.json").exists()
