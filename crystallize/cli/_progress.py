"""Live progress of ``crystallize run``: one bar per experiment, driven by the run's events."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from ..model import Event


class RunProgress:
    """One progress bar per experiment, driven by the run's events (``on_event``)."""

    def __init__(self, console: Console, names: Sequence[str]) -> None:
        # Refreshed on each event rather than by rich's background thread: the process pool
        # forks workers during the run, and forking while another thread runs is unsafe.
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
            console=console, auto_refresh=False,
        )
        self.totals: dict[str, int] = {}
        #: per lost worker, the units it held ("experiment condition rep N"), re-run elsewhere
        self.lost: dict[str, list[str]] = {}
        self.tasks: dict[str, TaskID] = {
            name: self.progress.add_task(name, total=None, note="[dim]waiting", start=False)
            for name in names
        }

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.refresh()
        self.progress.stop()

    def note(self, message: str, style: str) -> None:
        self.progress.console.print(Text(message, style=style))

    def on_event(self, event: Event) -> None:
        task = self.tasks.get(event.experiment)
        if task is None:
            return
        update = self.progress.update
        if event.kind == "decision" and event.reason and event.condition is None:
            self.note(f"{event.experiment}: {event.reason}", "dim")
        elif event.kind == "started":
            self.progress.start_task(task)
            self.totals[event.experiment] = event.units or 0
            update(task, total=event.units or 0, completed=0,
                   note=f"running -> v{event.version}")
        elif event.kind == "unit_finished":
            self.progress.advance(task)
            if event.error:
                self.note(event.describe(), "red")
            elif event.attempts > 1:
                self.note(event.describe(), "yellow")
        elif event.kind == "resumed":
            self.progress.start_task(task)
            update(task, total=1, completed=1, note=f"[green]cached, resumed v{event.version}")
        elif event.kind == "finished":
            update(task, completed=self.totals.get(event.experiment, 0),
                   note=f"[green]done -> v{event.version} ({event.duration or 0:.1f}s)")
        elif event.kind == "worker_lost":
            self.lost.setdefault(event.worker or "?", []).append(
                f"{event.experiment} {event.condition} rep {event.replicate}")
            self.note(event.describe(), "yellow")
        elif event.kind == "failed":
            update(task, note="[red]failed")
            self.note(event.describe(), "red")
        elif event.kind == "waiting":
            update(task, note="[yellow]waiting for another process")
            self.note(event.describe(), "yellow")
        elif event.kind == "skipped":
            self.progress.start_task(task)
            update(task, total=1, completed=0, note="[yellow]skipped")
            self.note(event.describe(), "yellow")
        self.progress.refresh()
