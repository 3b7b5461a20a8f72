"""The interactive terminal UI: ``crystallize`` (no arguments, in a terminal) or ``crystallize ui``.

Three screens, all built on the same functions as the plain commands:

- the **experiments** screen: every folder experiment under the root in a tree grouped by the
  folder that holds it, graph experiments (those reading other experiments' outputs) marked 📈,
  the highlighted one's details and store state, and an error panel for configs that do not load;
- **Create New Experiment** (``n``): a name and, under **Use outputs from other experiments**,
  the outputs of the experiments there, each wired in as an ``experiment#output`` entry under
  ``datasource:`` (what ``crystallize new --use`` does);
- the **run** screen (``enter``): the experiment and its dependencies, which run first, with
  live progress; 🔒 marks what is cached (an experiment under ``strategy: resume``, a step with
  the step cache) and ``l`` toggles it for the rest of the session; ``c`` (or Ctrl-C) cancels a
  run; the error panel lists failures, the worker tracebacks of failed units (``t`` cycles how
  much of them it shows, like ``--tb``) and the missing paths they name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Button,
    Checkbox,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    RichLog,
    SelectionList,
    Static,
    Tree,
)

from ..config import CONFIG_FILE, display_path, load_experiment, scaffold
from ..errors import (
    ConfigError,
    ExperimentFailedError,
    GraphError,
    MissingArtifactError,
    ScaffoldError,
)
from ..experiment import Experiment, ExperimentGraph
from ..model import Event, PipelineStep, Result
from ..render import failure_lines, format_values, hypothesis_lines
from ..running import experiment_status, treatment_labels, upstream_refs
from ._widgets import CachingChoices, MarkedCheckbox, MarkedSelectionList

GRAPH_ICON, LOCK_ICON = "📈", "🔒"
#: Folders never searched for experiments: stores, environments, caches.
_SKIPPED = {"data", "node_modules", "__pycache__", "venv", "site-packages"}
_MAX_DEPTH = 3


@dataclass
class Entry:
    """One folder experiment as the UI lists it (loaded, or the error that stopped it)."""

    config: Path
    experiment: Experiment | None = None
    error: str | None = None
    _state: str | None = field(default=None, repr=False)
    _graph: ExperimentGraph | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        if self.experiment is None:
            return self.config.parent.name
        return self.experiment.name or ""

    @property
    def upstreams(self) -> list[str]:
        """What it reads, as ``experiment#output`` (the config's own spelling)."""
        if self.experiment is None:
            return []
        try:
            return upstream_refs(self.graph(), self.name)
        except (ConfigError, GraphError):
            return sorted({f"{a.producer}#{a.name}" for a in self.experiment.consumed_artifacts()})

    @property
    def outputs(self) -> list[str]:
        return sorted(self.experiment.outputs) if self.experiment else []

    def graph(self) -> ExperimentGraph:
        """The experiment with its prerequisites; loaded once per listing."""
        if self._graph is None:
            self._graph = ExperimentGraph.from_yaml(self.config)
        return self._graph

    def treatments(self) -> list[str]:
        """Its treatments as a run has them: its own and those inherited from upstreams."""
        try:
            return treatment_labels(self.graph(), self.name)
        except (ConfigError, GraphError):  # a graph that does not load: its own at least
            return [t.name for t in self.experiment.treatments] if self.experiment else []

    def store_state(self) -> str:
        """Complete, stale (and why) or never run; worked out once per listing, since it
        fingerprints the experiment's graph."""
        if self._state is None:
            try:
                self._state = experiment_status(self.graph())[self.name].describe()
            except (ConfigError, GraphError) as exc:
                self._state = f"unknown: {exc}"
        return self._state


def discover(root: Path) -> dict[Path, list[Entry]]:
    """Folder experiments under ``root`` (a few levels deep), grouped by their parent folder."""
    groups: dict[Path, list[Entry]] = {}

    def walk(folder: Path, depth: int) -> Iterator[Path]:
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            if child.name.startswith(".") or child.name in _SKIPPED:
                continue
            if (child / CONFIG_FILE).is_file():
                yield child / CONFIG_FILE
            elif depth < _MAX_DEPTH:
                yield from walk(child, depth + 1)

    configs = [root / CONFIG_FILE] if (root / CONFIG_FILE).is_file() else list(walk(root, 1))
    for config in configs:
        entry = Entry(config)
        try:
            entry.experiment = load_experiment(config)
        except ConfigError as exc:
            entry.error = str(exc)
        groups.setdefault(config.parent.parent, []).append(entry)
    return groups


def step_label(step: PipelineStep) -> str:
    """A step as ``steps:`` in config.yaml names it (its factory's name, e.g. ``scale``)."""
    return step.fn.__name__


def describe(entry: Entry) -> Text:
    """The details panel for one experiment, with its state in the store."""
    text = Text()
    text.append(f"{entry.name}\n", style="bold")
    text.append(f"{display_path(entry.config)}\n\n", style="dim")
    exp = entry.experiment
    if exp is None:
        text.append(entry.error or "", style="red")
        return text
    if exp.description:
        text.append(f"{exp.description}\n\n")
    rows = [
        ("replicates", str(exp.replicates)),
        ("strategy", f"{exp.strategy} {LOCK_ICON if exp.strategy == 'resume' else ''}"),
        ("treatments", ", ".join(entry.treatments()) or "-"),
        ("steps", ", ".join(f"{step_label(s)}{' ' + LOCK_ICON if s.cacheable else ''}"
                            for s in exp.pipeline.steps) or "-"),
        ("reads from", ", ".join(entry.upstreams) or "-"),
        ("outputs", ", ".join(entry.outputs) or "-"),
        ("store", entry.store_state()),
    ]
    for key, value in rows:
        text.append(f"{key:>11}  ", style="cyan")
        text.append(f"{value}\n")
    text.append("\nenter: run it, dependencies first", style="dim")
    return text


class NewExperimentScreen(ModalScreen[Path | None]):
    """**Create New Experiment** in ``folder``, wired to outputs of the experiments there.

    ``experiment#output`` references resolve among sibling folders, so the outputs offered are
    those of the experiments in ``folder``.
    """

    BINDINGS: ClassVar = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, folder: Path, outputs: list[str]) -> None:
        super().__init__()
        self.folder = folder
        self.available = outputs

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Create New Experiment in {display_path(self.folder).as_posix()}/",
                        id="title")
            yield Input(placeholder="experiment name", id="name")
            yield MarkedCheckbox("Use outputs from other experiments", id="use",
                                 disabled=not self.available)
            yield MarkedSelectionList(*[(ref, ref) for ref in self.available], id="outputs")
            yield Static("", id="problem")
            with Horizontal(id="buttons"):
                yield Button("Create", variant="primary", id="create")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#outputs").display = False
        self.query_one("#name", Input).focus()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self.query_one("#outputs").display = event.value

    def on_input_submitted(self) -> None:
        self.create()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "create":
            self.create()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def create(self) -> None:
        name = self.query_one("#name", Input).value.strip()
        uses = (self.query_one("#outputs", SelectionList).selected
                if self.query_one("#use", Checkbox).value else [])
        try:
            written = scaffold(name, self.folder, uses, [])
            load_experiment(written[0])
        except (ScaffoldError, ConfigError) as exc:
            self.query_one("#problem", Static).update(Text(str(exc), style="red"))
            return
        self.dismiss(written[0])


@dataclass
class _Row:
    """A row of the run table: an experiment, or one of its steps (``step`` set)."""

    experiment: str
    step: int | None = None
    done: int = 0
    total: int = 0
    state: str = "waiting"


class RunScreen(Screen[None]):
    """Runs one experiment with its prerequisites, drawing progress from the run's events."""

    BINDINGS: ClassVar = [
        Binding("r", "run", "Run"),
        Binding("c", "cancel", "Cancel run"),
        Binding("l", "toggle_lock", "Toggle caching"),
        Binding("t", "traceback", "Tracebacks"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(
        self, config: Path, executor: str | None, choices: CachingChoices | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.executor = executor
        self.graph = ExperimentGraph.from_yaml(config)
        self.folder = config.resolve().parent.parent
        self.choices = choices if choices is not None else CachingChoices()
        self.choices.apply(self.folder, self.graph)
        self.order = self.graph.topological_order()
        self.rows: list[_Row] = []
        for name in self.order:
            self.rows.append(_Row(name))
            steps = self.graph.experiments[name].pipeline.steps
            self.rows += [_Row(name, i) for i in range(len(steps))]
        self.running = False
        #: how much of the failed units' tracebacks the error panel shows (``--tb``'s modes)
        self.tb: str | None = None
        self._failures: dict[str, str] = {}
        self._results: dict[str, Result] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        target = self.order[-1]
        chain = " → ".join(self.order)
        yield Static(Text.assemble(("Run ", "bold"), (target, "bold cyan"),
                                   f"  (dependencies first: {chain})"), id="heading")
        yield DataTable(id="units", cursor_type="row", zebra_stripes=True)
        yield RichLog(id="log", wrap=True, markup=False)
        yield Static("", id="errors")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#units", DataTable)
        table.add_columns("", "experiment / step", "progress", "state")
        statuses = experiment_status(self.graph)
        for row in self.rows:
            if row.step is None:
                row.state = statuses[row.experiment].describe()
        for index, row in enumerate(self.rows):
            table.add_row(*self._cells(row), key=str(index))
        self.query_one("#errors").display = False
        table.focus()

    # -- drawing ------------------------------------------------------------------------------
    def _cells(self, row: _Row) -> tuple[str, str, str, str]:
        exp = self.graph.experiments[row.experiment]
        if row.step is not None:
            step = exp.pipeline.steps[row.step]
            return (LOCK_ICON if step.cacheable else "", f"  └ {step_label(step)}", "", "")
        lock = LOCK_ICON if exp.strategy == "resume" else ""
        width = 20
        filled = round(width * row.done / row.total) if row.total else 0
        bar = f"{'━' * filled}{'╺' * (width - filled)} {row.done}/{row.total}" if row.total else ""
        return (lock, row.experiment, bar, row.state)

    def _redraw(self, index: int) -> None:
        table = self.query_one("#units", DataTable)
        for column, value in zip(table.columns, self._cells(self.rows[index]), strict=True):
            table.update_cell(str(index), column, value, update_width=True)

    def _experiment_row(self, name: str) -> int:
        return next(i for i, r in enumerate(self.rows) if r.experiment == name and r.step is None)

    def show_errors(self) -> None:
        """The panel: failed experiments, failed units (tracebacks as ``tb`` asks), and the
        missing paths their errors name."""
        lines = [f"{name}: {cause}" for name, cause in self._failures.items()]
        units = failure_lines(self._results, self.tb)
        if units:
            mode = self.tb or "first in full"
            lines += [f"failed units (tracebacks: {mode}; t to change):", *units]
        missing = sorted({
            str(error.path) for result in self._results.values()
            for error in result.errors.values()
            if isinstance(error, MissingArtifactError) and error.path is not None
        })
        lines += [f"missing path: {m}" for m in missing]
        panel = self.query_one("#errors", Static)
        panel.update(Text("\n".join(lines), style="red"))
        panel.display = bool(lines)

    # -- actions ------------------------------------------------------------------------------
    def action_back(self) -> None:
        if not self.running:
            self.dismiss(None)

    def action_toggle_lock(self) -> None:
        if self.running:
            return
        table = self.query_one("#units", DataTable)
        index = table.cursor_row
        row = self.rows[index]
        exp = self.graph.experiments[row.experiment]
        if row.step is None:
            exp.strategy = "rerun" if exp.strategy == "resume" else "resume"
            self.choices.strategies[(self.folder, row.experiment)] = exp.strategy
        else:
            step = exp.pipeline.steps[row.step]
            step.cacheable = not step.cacheable
            self.choices.steps[(self.folder, row.experiment, row.step)] = step.cacheable
        self._redraw(index)

    def action_traceback(self) -> None:
        modes: list[str | None] = [None, "long", "short", "no"]
        self.tb = modes[(modes.index(self.tb) + 1) % len(modes)]
        self.show_errors()

    def action_run(self) -> None:
        if not self.running:
            self.running = True
            self._failures, self._results = {}, {}
            self.show_errors()
            self.run_graph()

    def action_cancel(self) -> None:
        """Stop the run: its workers stop and nothing it left half done is marked complete."""
        if self.running:
            self.workers.cancel_node(self)

    def progress(self, event: Event) -> None:
        """The run's progress, delivered on the UI's own event loop by the scheduler."""
        index = self._experiment_row(event.experiment)
        row = self.rows[index]
        log = self.query_one("#log", RichLog)
        if event.kind == "started":
            row.total, row.done, row.state = event.units or 0, 0, f"running -> v{event.version}"
        elif event.kind == "unit_finished":
            row.done += 1
        elif event.kind == "resumed":
            row.total = row.done = 1
            row.state = f"{LOCK_ICON} cached, resumed v{event.version}"
        elif event.kind == "finished":
            row.state = f"done -> v{event.version}"
        elif event.kind in ("failed", "skipped"):
            row.state = f"{event.kind}: {event.error or event.reason}"
        if event.kind != "unit_finished" or event.attempts > 1:
            log.write(event.describe())
        self._redraw(index)

    @work(exclusive=True)
    async def run_graph(self) -> None:
        log = self.query_one("#log", RichLog)
        failures: dict[str, str] = {}
        try:
            results = await self.graph.arun(executor=self.executor, on_event=self.progress)
        except ExperimentFailedError as exc:
            results, failures = exc.results, exc.failures
        except asyncio.CancelledError:
            log.write("run cancelled: nothing it left unfinished is marked complete")
            for index, row in enumerate(self.rows):
                if row.step is None and row.state.startswith(("waiting", "running")):
                    row.state = "cancelled"
                    self._redraw(index)
            raise
        except Exception as exc:  # noqa: BLE001 - shown in the panel, the UI stays usable
            results, failures = {}, {self.order[-1]: f"{type(exc).__name__}: {exc}"}
        finally:
            self.running = False
        for name, result in results.items():
            for cond in result.conditions:
                metrics = result.metrics.condition(cond).metrics
                shown = ", ".join(f"{m}={format_values(v)}" for m, v in metrics.items())
                log.write(f"{name} [{cond}] {shown}")
            for line in hypothesis_lines(result):
                log.write(f"{name}: {line}")
        self._failures, self._results = failures, results
        self.show_errors()


class ExperimentsScreen(Screen[None]):
    """The experiments under ``root``; ``n`` creates one, ``enter`` runs the highlighted one."""

    BINDINGS: ClassVar = [
        Binding("enter", "run", "Run"),
        Binding("n", "new", "New experiment"),
        Binding("g", "refresh", "Refresh"),
    ]

    def __init__(self, root: Path, executor: str | None) -> None:
        super().__init__()
        self.root = root
        self.executor = executor
        self.groups: dict[Path, list[Entry]] = {}
        self.choices = CachingChoices()

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            yield Tree("experiments", id="tree")
            with VerticalScroll():
                yield Static("", id="details")
        yield Static("", id="errors")
        yield Footer()

    def on_mount(self) -> None:
        self.action_refresh()

    @property
    def entries(self) -> list[Entry]:
        return [e for group in self.groups.values() for e in group]

    def action_refresh(self, select: Path | None = None) -> None:
        tree = self.query_one("#tree", Tree)
        if select is None and tree.cursor_node is not None:
            # Stay on the highlighted experiment, and show what is now true about it.
            current = tree.cursor_node.data
            select = current.config if isinstance(current, Entry) else None
        self.groups = discover(self.root)
        tree.clear()
        tree.root.expand()
        chosen = None
        for folder, entries in self.groups.items():
            branch = tree.root.add(display_path(folder).as_posix(), expand=True, data=folder)
            for entry in entries:
                label = Text(entry.name, style="red" if entry.error else "")
                if entry.upstreams:
                    label = Text(f"{GRAPH_ICON} ") + label
                node = branch.add_leaf(label, data=entry)
                if select is not None and entry.config.resolve() == select.resolve():
                    chosen = node
        errors = [entry.error for entry in self.entries if entry.error]
        if not self.groups:
            errors.append(f"no experiments under {display_path(self.root)}: press n to create one")
        panel = self.query_one("#errors", Static)
        panel.update(Text("\n".join(e or "" for e in errors), style="red"))
        panel.display = bool(errors)
        if chosen is not None:  # once the cleared tree has laid out its new lines
            self.call_after_refresh(tree.move_cursor, chosen)
            # The cursor may stay on the same line, which highlights nothing anew.
            self.call_after_refresh(self.show, chosen.data)
        tree.focus()

    def show(self, entry: object) -> None:
        """Fill the details panel for ``entry`` (blank for a folder)."""
        details = self.query_one("#details", Static)
        details.update(describe(entry) if isinstance(entry, Entry) else "")

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[Any]) -> None:
        self.show(event.node.data)

    def on_tree_node_selected(self, event: Tree.NodeSelected[Any]) -> None:
        self.action_run()

    def action_run(self) -> None:
        node = self.query_one("#tree", Tree).cursor_node
        entry = node.data if node is not None else None
        if not isinstance(entry, Entry) or entry.experiment is None:
            return
        try:
            screen = RunScreen(entry.config, self.executor, self.choices)
        except (ConfigError, GraphError) as exc:
            self.app.notify(str(exc), severity="error", timeout=10)
            return
        # Back on this screen, show what the run changed in the store.
        self.app.push_screen(screen, lambda _: self.action_refresh(select=entry.config))

    def action_new(self) -> None:
        """Create an experiment next to the highlighted one (or in the first folder, or root)."""
        node = self.query_one("#tree", Tree).cursor_node
        data = node.data if node is not None else None
        if isinstance(data, Entry):
            folder = data.config.parent.parent
        elif isinstance(data, Path):
            folder = data
        else:
            folder = next(iter(self.groups), self.root)
        siblings = self.groups.get(folder, [])
        outputs = sorted(f"{e.name}#{o}" for e in siblings for o in e.outputs)
        self.app.push_screen(NewExperimentScreen(folder, outputs), self._created)

    def _created(self, config: Path | None) -> None:
        if config is not None:
            self.action_refresh(select=config)
            self.app.notify(f"created {display_path(config.parent)}")




class CrystallizeApp(App[None]):
    """The terminal UI on the folder experiments under ``root``."""

    TITLE = "crystallize"
    CSS = """
    #tree { width: 45%; }
    #details { padding: 0 1; }
    #errors { height: auto; max-height: 12; border: round red; padding: 0 1; }
    #log { height: 1fr; border: round $accent; }
    #units { height: auto; max-height: 60%; }
    #heading { padding: 0 1; }
    NewExperimentScreen { align: center middle; }
    #dialog { width: 72; height: auto; border: thick $accent; padding: 1 2;
              background: $surface; }
    #outputs { height: auto; max-height: 12; }
    #buttons { height: auto; }
    #title { text-style: bold; }
    """
    BINDINGS: ClassVar = [
        Binding("q", "quit", "Quit"),
        # Ctrl-C does what it does in a terminal: stop the run, or else leave (no quit prompt).
        Binding("ctrl+c", "interrupt", "Cancel run / quit", show=False, priority=True),
    ]

    def __init__(self, root: Path, executor: str | None = None) -> None:
        super().__init__()
        self.root = root
        self.executor = executor

    def on_mount(self) -> None:
        self.push_screen(ExperimentsScreen(self.root, self.executor))

    def action_interrupt(self) -> None:
        screen = self.screen
        if isinstance(screen, RunScreen) and screen.running:
            screen.action_cancel()
        else:
            self.exit()


def run_ui(root: Path, executor: str | None = None) -> int:
    """Open the UI on ``root``; returns the exit code."""
    CrystallizeApp(root, executor).run()
    return 0
