"""Progress events: what the scheduler reports to ``on_event`` callbacks and plugins."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

EventKind = Literal[
    "started",  # an experiment began executing (``units`` = units to run)
    "decision",  # what runs and why (``reason``); with ``condition``/``replicate``, one unit's
    "resumed",  # an experiment was loaded from the store instead of executed
    "unit_finished",  # one (condition, replicate) unit finished (``error`` set if it failed)
    "finished",  # an experiment's run was published (``version``)
    "failed",  # an experiment failed (``error``); its downstream is skipped
    "skipped",  # an experiment was not run because an upstream failed (``reason``)
    "waiting",  # another process is computing the experiment; ``reason`` says who
    "worker_lost",  # a Dask worker was lost while it held a unit, re-run elsewhere (``worker``)
    "warning",  # something a reader of the results must know (``reason``), e.g. a fallback
]


@dataclass(frozen=True)
class Event:
    """One structured progress event. ``time`` is ``time.time()`` when it was emitted."""

    kind: EventKind
    experiment: str
    condition: str | None = None
    replicate: int | None = None
    units: int | None = None
    duration: float | None = None
    version: int | None = None
    reason: str | None = None
    error: str | None = None
    steps: tuple[tuple[str, float], ...] = ()
    worker: str | None = None
    #: for ``unit_finished``: how many times the unit ran (more than 1: it was retried)
    attempts: int = 1
    time: float = field(default_factory=time.time)

    def describe(self) -> str:
        """A one-line human description."""
        name = self.experiment
        if self.kind == "started":
            why = f" ({self.reason})" if self.reason else ""
            return f"{name}: running {self.units} unit(s){why}"
        if self.kind == "decision":
            if self.condition is not None:
                return f"{name} [{self.condition} rep {self.replicate}]: {self.reason}"
            return f"{name}: {self.reason}"
        if self.kind == "resumed":
            return f"{name}: resumed from v{self.version}"
        if self.kind == "unit_finished":
            status = f"failed: {self.error}" if self.error else "done"
            if self.attempts > 1:
                status += f" after {self.attempts} attempts"
            return f"{name} [{self.condition} rep {self.replicate}] {status}"
        if self.kind == "finished":
            return f"{name}: finished in {self.duration:.2f}s -> v{self.version}"
        if self.kind == "worker_lost":
            return (f"{name} [{self.condition} rep {self.replicate}]: worker {self.worker} was "
                    "lost while it held this unit; re-run elsewhere")
        if self.kind == "failed":
            return f"{name}: FAILED: {self.error}"
        if self.kind == "waiting":
            return f"{name}: {self.reason}"
        if self.kind == "warning":
            return f"{name}: warning: {self.reason}"
        return f"{name}: skipped: {self.reason}"
