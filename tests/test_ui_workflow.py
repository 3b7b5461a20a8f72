"""The terminal UI's workflow keys (SPEC §6), driven through Textual's pilot: cancelling a run,
tracebacks in the error panel, caching choices kept for the session, fresh details after ``g``,
inherited treatments, and checkboxes readable without colour."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_ui import SIZE, open_run_screen, rows
from textual.widgets import Static, Tree

from crystallize.store import ExperimentStore
from crystallize.ui import CrystallizeApp

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"  # Textual runs on asyncio only


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def text_of(widget: Static) -> str:
    # What the widget shows, in full: Textual 2+ calls it `content`, 1.x (our floor) `renderable`;
    # str(render()) of a 1.x widget is a repr that cuts long text short.
    shown = widget.content if hasattr(widget, "content") else widget.renderable
    return str(shown)


async def wait_for(pilot, condition, what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition() and time.monotonic() < deadline:
        await pilot.pause(0.05)
    assert condition(), what


def _endless_consumer(root: Path) -> None:
    """The consumer's step waits until the run is cancelled."""
    _edit(root / "dag" / "consumer" / "steps.py", "def inspect_summary(",
          "async def inspect_summary(")
    _edit(root / "dag" / "consumer" / "steps.py", '    summary = data["producer_summary"]\n',
          '    summary = data["producer_summary"]\n    import anyio\n'
          '    await anyio.sleep_forever()\n')


@pytest.mark.parametrize("key", ["c", "ctrl+c"])
async def test_a_key_cancels_the_run(root: Path, key: str) -> None:
    _endless_consumer(root)
    app = CrystallizeApp(root, executor="inline")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_run_screen(pilot, app, "consumer")
        await pilot.press("r")
        await wait_for(pilot, lambda: rows(screen)[2][3].startswith("running"),
                       "the consumer never started")
        await pilot.press(key)
        await wait_for(pilot, lambda: not screen.running, "the run was not cancelled")
        assert app.screen is screen  # Ctrl-C stopped the run; it did not ask to quit the app
        assert rows(screen)[0][3] == "done -> v0" and rows(screen)[2][3] == "cancelled"
        log = "\n".join(str(line.text) for line in screen.query_one("#log").lines)
        assert "run cancelled" in log
        assert ExperimentStore(Path("data"), "consumer").newest_complete() is None

        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("ctrl+c")  # with no run going, Ctrl-C leaves, with no prompt
        await pilot.pause()
    assert app.return_code == 0


async def test_error_panel_shows_worker_tracebacks_and_t_cycles_them(root: Path) -> None:
    _edit(root / "dag" / "consumer" / "steps.py", '    summary = data["producer_summary"]\n',
          '    summary = data["producer_summary"]\n    raise ValueError("boom")\n')
    app = CrystallizeApp(root, executor="thread")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_run_screen(pilot, app, "consumer")
        await pilot.press("r")
        await wait_for(pilot, lambda: not screen.running and rows(screen)[2][3] != "never run",
                       "the run did not finish")
        panel = screen.query_one("#errors", Static)
        shown = text_of(panel)
        assert "tracebacks: first in full" in shown
        assert shown.count("Traceback") == 1 and "in inspect_summary" in shown
        # the failure's cause, 6 units, and the last line of the traceback
        assert shown.count("ValueError: boom") == 8
        await pilot.press("t")  # long
        assert text_of(panel).count("Traceback") == 6
        await pilot.press("t")  # short
        assert "Traceback" not in text_of(panel) and text_of(panel).count("boom") >= 6
        await pilot.press("t")  # no
        assert text_of(panel).count("] failed") == 6
        await pilot.press("t")  # back to the first in full
        assert text_of(panel).count("Traceback") == 1


async def test_caching_toggles_survive_reopening_the_run_screen(root: Path) -> None:
    app = CrystallizeApp(root)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_run_screen(pilot, app, "consumer")
        assert [r[0] for r in rows(screen)] == ["🔒", "", "🔒", ""]
        await pilot.press("l", "down", "l")  # producer: not cached; its step: cached
        assert [r[0] for r in rows(screen)] == ["", "🔒", "🔒", ""]
        await pilot.press("escape")
        await pilot.pause()
        again = await open_run_screen(pilot, app, "consumer")
        assert again is not screen
        assert [r[0] for r in rows(again)] == ["", "🔒", "🔒", ""]
        assert again.graph.experiments["producer"].strategy == "rerun"
        assert again.graph.experiments["producer"].pipeline.steps[0].cacheable
        await pilot.press("escape")
        await pilot.pause()
        # The producer's own run screen shares the choice.
        producer = await open_run_screen(pilot, app, "producer")
        assert [r[0] for r in rows(producer)] == ["", "🔒"]


async def test_details_name_steps_as_the_config_with_inherited_treatments(root: Path) -> None:
    _edit(root / "dag" / "producer" / "config.yaml", "steps:",
          "treatments:\n  small: {n: 50}\nsteps:")
    app = CrystallizeApp(root)
    async with app.run_test(size=SIZE) as pilot:
        tree = app.screen.query_one("#tree", Tree)
        details = app.screen.query_one("#details", Static)
        await pilot.press("down", "down")
        await pilot.pause()
        assert str(tree.cursor_node.label) == "📈 consumer"
        shown = " ".join(text_of(details).split())
        assert "treatments small (from producer), double" in shown
        assert "steps inspect_summary" in shown and "Step" not in shown
        assert "reads from producer#summary " in shown + " "

        # g reloads, and the details show what the files say now.
        _edit(root / "dag" / "consumer" / "config.yaml", "replicates: 3", "replicates: 5")
        await pilot.press("g")
        await pilot.pause()
        await pilot.pause()
        assert str(tree.cursor_node.label) == "📈 consumer"
        assert "replicates 5" in " ".join(text_of(details).split())


async def test_checkboxes_are_readable_without_colour(root: Path) -> None:
    app = CrystallizeApp(root)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.pause()
        use = app.screen.query_one("#use")
        assert "▐ ▌" in str(use.render())
        await pilot.click("#use")
        await pilot.pause()
        assert "▐X▌" in str(use.render())

        outputs = app.screen.query_one("#outputs")
        assert outputs.render_line(0).text.startswith("▐ ▌ producer#summary")
        outputs.focus()
        await pilot.press("space")
        await pilot.pause()
        assert outputs.selected == ["producer#summary"]
        assert outputs.render_line(0).text.startswith("▐X▌ producer#summary")
