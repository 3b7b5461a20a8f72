"""Plugins: hooks into an experiment's life cycle, and the three built-in ones.

Hooks run where the work happens: ``init_hook``, ``before_run``, ``after_run`` and
``on_event`` in the process that drives the run; ``before_replicate``, ``before_step`` and
``after_step`` inside the unit, which may be a worker process, so plugins must be picklable.
"""

from __future__ import annotations

import hashlib
import logging
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._parameters import check_types

if TYPE_CHECKING:
    from ..experiment import Experiment
    from ._context import FrozenContext
    from ._events import Event
    from ._result import Result
    from ._steps import PipelineStep


class BasePlugin:
    """Override any hook; the defaults do nothing."""

    def init_hook(self, experiment: Experiment) -> None:
        """Called once when the experiment is constructed."""

    def before_run(self, experiment: Experiment) -> None:
        """Called before the experiment's units are dispatched (not when it is resumed)."""

    def before_replicate(self, experiment: Experiment, ctx: FrozenContext) -> None:
        """Called in the unit before its datasource is fetched."""

    def before_step(self, experiment: Experiment, step: PipelineStep) -> None:
        """Called in the unit before each step."""

    def after_step(
        self, experiment: Experiment, step: PipelineStep, data: Any, ctx: FrozenContext
    ) -> None:
        """Called in the unit after each step with its output."""

    def after_run(self, experiment: Experiment, result: Result) -> None:
        """Called with the experiment's result, whether it was executed or resumed."""

    def on_event(self, experiment: Experiment, event: Event) -> None:
        """Called in the driving process for every progress event of this experiment."""


class ArtifactPlugin(BasePlugin):
    """Where and how runs are stored: ``<root_dir>/<experiment>/vN/``.

    ``versioned=False`` keeps only the newest complete version; ``versioned=True`` keeps the
    newest ``artifact_retention`` complete versions. Older versions are removed only after a
    newer one is complete. ``fsync=True`` also makes each version durable against power loss
    (every file is flushed to disk before its completion marker), at a cost per file.
    """

    def __init__(
        self,
        root_dir: str | Path = "data",
        versioned: bool = False,
        artifact_retention: int = 3,
        *,
        fsync: bool = False,
    ) -> None:
        check_types(ArtifactPlugin.__init__, {
            "root_dir": root_dir, "versioned": versioned,
            "artifact_retention": artifact_retention, "fsync": fsync}, "ArtifactPlugin")
        if artifact_retention < 1:
            raise ValueError(f"artifact_retention must be >= 1, got {artifact_retention}")
        self.root_dir = Path(root_dir)
        self.versioned = versioned
        self.artifact_retention = artifact_retention
        self.fsync = fsync

    @property
    def keep(self) -> int:
        """How many complete versions survive pruning."""
        return self.artifact_retention if self.versioned else 1


class LoggingPlugin(BasePlugin):
    """Logs the run to the ``crystallize`` logger.

    Experiment starts, finishes, failures and resumes are logged at ``log_level``; with
    ``verbose=True`` also every step of every unit (with its duration) and every resume decision
    with its reason.
    """

    def __init__(self, verbose: bool = False, log_level: str | int = "INFO") -> None:
        check_types(LoggingPlugin.__init__, {"verbose": verbose, "log_level": log_level},
                    "LoggingPlugin")
        self.verbose = verbose
        self.level = logging.getLevelName(log_level) if isinstance(log_level, str) else log_level
        if not isinstance(self.level, int):
            raise ValueError(f"unknown log_level {log_level!r}; use DEBUG, INFO, WARNING, ...")
        self.log_level = log_level

    def on_event(self, experiment: Experiment, event: Event) -> None:
        log = _visible_logger(self.level)
        if event.kind == "warning":
            log.warning("%s", event.describe())
            return
        if event.kind == "unit_finished":
            if not self.verbose:
                return
            for step, seconds in event.steps:
                log.log(
                    self.level,
                    "%s [%s rep %s] %s done in %.3fs",
                    event.experiment, event.condition, event.replicate, step, seconds,
                )
            if event.error:
                log.log(self.level, "%s [%s rep %s] failed: %s",
                        event.experiment, event.condition, event.replicate, event.error)
            return
        if event.kind == "decision" and not self.verbose:
            return
        log.log(self.level, "%s", event.describe())


#: The handler a LoggingPlugin added because logging was not configured (at most one).
_FALLBACK_HANDLER: logging.Handler | None = None


def _visible_logger(level: int) -> logging.Logger:
    """The ``crystallize`` logger, made to show ``level`` on stderr if logging is unconfigured.

    Adding a LoggingPlugin is the request to see its messages, so in a plain script (no handler
    anywhere, no level set) it gets a stderr handler; a program that configured logging keeps
    full control.
    """
    global _FALLBACK_HANDLER
    log = logging.getLogger("crystallize")
    if _FALLBACK_HANDLER is None and not log.hasHandlers():
        _FALLBACK_HANDLER = logging.StreamHandler(sys.stderr)
        _FALLBACK_HANDLER.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(_FALLBACK_HANDLER)
    if _FALLBACK_HANDLER in log.handlers and log.getEffectiveLevel() > level:
        log.setLevel(level)
    return log


def _derive(master: int, replicate: int) -> int:
    digest = hashlib.sha256(f"{master}:{replicate}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _seed_libraries(seed: int) -> None:
    random.seed(seed)
    # numpy is seeded only if the step code already imported it: never import it for the user.
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % 2**32)


class SeedPlugin(BasePlugin):
    """Deterministic per-replicate seeds.

    Replicate ``r`` gets a seed derived from a master ``seed`` (default: a stable hash of the
    experiment's name) and ``r``; every condition of a replicate shares it, so treatments are
    compared on the same random draws. ``seed_fn(seed)`` is called in the unit before its
    datasource runs (default: seeds :mod:`random`, and NumPy's global RNG if NumPy is loaded).
    The seed is also in the context as ``ctx["seed"]``.
    """

    def __init__(self, seed: int | None = None, seed_fn: Callable[[int], Any] | None = None):
        check_types(SeedPlugin.__init__, {"seed": seed, "seed_fn": seed_fn}, "SeedPlugin")
        self.seed = seed
        self.seed_fn = seed_fn

    def master_seed(self, experiment_name: str) -> int:
        if self.seed is not None:
            return int(self.seed)
        return int.from_bytes(hashlib.sha256(experiment_name.encode()).digest()[:4], "big")

    def replicate_seed(self, experiment_name: str, replicate: int) -> int:
        return _derive(self.master_seed(experiment_name), replicate)

    def apply(self, seed: int) -> None:
        (self.seed_fn or _seed_libraries)(seed)
