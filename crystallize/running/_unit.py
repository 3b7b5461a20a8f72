"""One unit: a single (condition, replicate) pass through an experiment's pipeline.

This is the code that runs inside executors (worker processes, threads, Dask workers or the
event loop), so everything it receives and returns is picklable and self-contained.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import (
    MissingArtifactError,
    UnitError,
    UpstreamFailedError,
)
from ..model import BASELINE, FrozenContext, is_artifact, unit_scope
from ..store import FileRecord, artifact_file, atomic_write, host_name

if TYPE_CHECKING:
    from ..experiment import Experiment
    from ..model import Artifact, PipelineStep


@dataclass(frozen=True)
class UpstreamView:
    """What a consumer's units need to know about one upstream run to read its artifacts."""

    experiment: str
    version: int
    path: str
    replicates: int
    #: condition -> artifact file name -> relative path per replicate (None where missing)
    artifacts: dict[str, dict[str, list[str | None]]]
    #: condition -> replicate -> why that upstream unit failed
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    #: condition -> artifact file name -> content hash per replicate (None where unknown)
    hashes: dict[str, dict[str, list[str | None]]] = field(default_factory=dict)

    def locate(self, condition: str, replicate: int) -> tuple[str, int]:
        """The condition and replicate of this upstream that a consumer unit reads from: its
        own condition (the baseline only where the upstream never had that condition; one it
        ran is never replaced) and replicate ``replicate % upstream replicates``."""
        if condition not in self.artifacts:
            condition = BASELINE
        return condition, replicate % self.replicates

    def content_hash(self, condition: str, name: str, replicate: int) -> str | None:
        """The hash of the artifact a consumer unit of ``condition`` x ``replicate`` reads."""
        condition, replicate = self.locate(condition, replicate)
        per_rep = self.hashes.get(condition, {}).get(name, [])
        return per_rep[replicate] if replicate < len(per_rep) else None


@dataclass(frozen=True)
class UnitTask:
    """Everything a unit needs besides the experiment itself."""

    condition: str
    replicate: int
    seed: int
    version_path: str
    upstreams: dict[str, UpstreamView]
    cache_dir: str | None = None


@dataclass
class UnitOutcome:
    """What a unit returns: metrics, artifact files (relative to the version), error, timings."""

    condition: str
    replicate: int
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, FileRecord] = field(default_factory=dict)
    #: producer -> file name -> content hash of each upstream artifact this unit read
    reads: dict[str, dict[str, str | None]] = field(default_factory=dict)
    error: BaseException | None = None
    traceback: str | None = None
    steps: list[tuple[str, float]] = field(default_factory=list)
    cpu: float = 0.0
    wall: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: workers lost while they held this unit, which then ran elsewhere (Dask)
    lost_workers: list[str] = field(default_factory=list)
    #: wall-clock start of the first attempt and end of the last (``time.time()``)
    started: float = 0.0
    finished: float = 0.0
    #: the worker that ran it: host, process and thread, as ``host:pid:thread``
    worker: str = ""
    #: how many times it ran (more than one when it failed and the experiment retries)
    attempts: int = 1
    #: the errors of the attempts that failed before the last one, as ``Type: message``
    retried: list[str] = field(default_factory=list)
    #: what a reader of this unit's numbers must know (surfaced in ``Result.warnings``)
    warnings: list[str] = field(default_factory=list)
    #: keys the condition's treatment set that this unit never read
    unread: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.condition}_rep_{self.replicate}"


#: The file name cloudpickle gives code it carried by value (a folder experiment's modules).
_BY_VALUE = "<dynamic-code>"


def format_traceback(exc: BaseException) -> str:
    """``exc`` with its traceback as text, naming the user's source files also for code that
    cloudpickle carried to this worker by value: it renames such code's file, but the
    function's globals keep its module's ``__file__``, so the frame and its line can be shown.
    """
    shown = traceback.TracebackException.from_exception(exc, lookup_lines=False)
    pending: list[tuple[traceback.TracebackException | None, BaseException | None]] = [
        (shown, exc)]
    seen: set[int] = set()
    while pending:
        summary, error = pending.pop()
        if summary is None or error is None or id(error) in seen:
            continue
        seen.add(id(error))
        for frame_summary, (frame, _) in zip(
            summary.stack, traceback.walk_tb(error.__traceback__), strict=False
        ):
            path = frame.f_globals.get("__file__")
            if frame_summary.filename == _BY_VALUE and isinstance(path, str):
                frame_summary.filename = path
        pending += [(summary.__cause__, error.__cause__), (summary.__context__, error.__context__)]
    return "".join(shown.format())


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a :class:`UnitError` carrying its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return UnitError(type(exc).__qualname__, str(exc), "".join(traceback.format_exception(exc)))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class UnitRun:
    """State of one unit while its pipeline executes; also the sink its artifacts write to."""

    def __init__(self, experiment: Experiment, task: UnitTask) -> None:
        self.experiment = experiment
        self.task = task
        self.outcome = UnitOutcome(task.condition, task.replicate)
        self.version_path = Path(task.version_path)
        self._step: PipelineStep | None = None
        self._captured: list[tuple[str, bytes]] | None = None
        #: artifact name -> the step that wrote it
        self._writers: dict[str, str] = {}
        self.started = time.perf_counter()
        self._c0 = time.thread_time()
        self.outcome.started = time.time()
        self.outcome.worker = _worker_id()

    # -- the runtime the context exposes to artifacts ---------------------------------------
    def artifact_path(self, artifact: Artifact, ctx: FrozenContext) -> Path:
        view = self.task.upstreams.get(artifact.producer or "")
        if view is None:
            raise MissingArtifactError(
                f"{self.experiment.name}: artifact {artifact!r} has no complete upstream run in "
                f"the store; run experiment {artifact.producer!r} first",
                producer=artifact.producer,
            )
        condition = self.task.condition
        read, rep = view.locate(condition, self.task.replicate)
        if read != condition:
            path = self._upstream_file(view, read, rep, artifact)
            # One message for all replicates of the condition (they differ only in ~rN~).
            shown = path.with_name(path.name.replace(f"~r{rep}~", "~r*~", 1))
            self.outcome.warnings.append(
                f"{self.experiment.name} [{condition}]: {view.experiment} v{view.version} has no "
                f"condition {condition!r}; read its baseline's {artifact.name} instead ({shown})"
            )
            return path
        return self._upstream_file(view, condition, rep, artifact)

    def _upstream_file(
        self, view: UpstreamView, condition: str, rep: int, artifact: Artifact
    ) -> Path:
        per_rep = view.artifacts.get(condition, {}).get(artifact.name)
        rel = per_rep[rep] if per_rep is not None and rep < len(per_rep) else None
        if rel is not None:
            # What the unit read, by content: resume reuses it while these hashes still match.
            self.outcome.reads.setdefault(view.experiment, {})[artifact.name] = (
                view.content_hash(condition, artifact.name, rep))
            return Path(view.path) / rel
        # Where the producer would have written it; * stands for the step that never did.
        missing = Path(view.path) / artifact_file(condition, rep, artifact.step or "*",
                                                  artifact.name)
        why = view.errors.get(condition, {}).get(str(rep))
        if why is not None:
            raise UpstreamFailedError(
                f"upstream {view.experiment} v{view.version}: its unit {condition}_rep_{rep} "
                f"failed ({why}), so it wrote no {artifact.name!r} for this unit to read "
                f"(missing path: {missing}). Fix {view.experiment} and run it again",
                producer=view.experiment, path=missing,
            )
        if per_rep is None:
            raise MissingArtifactError(
                f"{view.experiment} v{view.version} has no artifact {artifact.name!r} for "
                f"condition {condition!r} (missing path: {missing}); check that a step of "
                f"{view.experiment} writes it",
                producer=view.experiment, path=missing,
            )
        raise MissingArtifactError(
            f"{view.experiment} v{view.version}: replicate {rep} of {condition} wrote no "
            f"{artifact.name!r} (missing path: {missing}; its step skipped the write)",
            producer=view.experiment, path=missing,
        )

    def check_replicates_agree(self, artifacts: list[Artifact]) -> None:
        seen: dict[str, int] = {}
        for art in artifacts:
            view = self.task.upstreams.get(art.producer or "")
            if view is None:
                continue
            if seen.setdefault(view.experiment, view.replicates) != view.replicates:
                raise ValueError(
                    f"ExperimentInput: artifacts from {view.experiment!r} disagree on its "
                    f"replicate count ({seen[view.experiment]} vs {view.replicates}); rerun "
                    f"{view.experiment!r} so all its artifacts come from one run"
                )

    @contextmanager
    def capturing_writes(self) -> Iterator[list[tuple[str, bytes]]]:
        """While open, the yielded list collects every artifact written (the step cache's)."""
        captured: list[tuple[str, bytes]] = []
        self._captured = captured
        try:
            yield captured
        finally:
            self._captured = None

    def _relative(self, step: str, file_name: str) -> str:
        return artifact_file(self.task.condition, self.task.replicate, step, file_name)

    def write_artifact(self, artifact: Artifact, payload: bytes) -> Path:
        step = self._step.name if self._step is not None else "datasource"
        rel = self._relative(step, artifact.name)
        earlier = self._writers.setdefault(artifact.name, step)
        if earlier != step:
            raise ValueError(
                f"artifact {artifact.name!r} is written by two steps ({earlier} and {step}); "
                "consumers would read only one. Give each step its own output"
            )
        path = self.version_path / rel
        atomic_write(path, payload, fsync=self.experiment.store_plugin.fsync)
        self.outcome.artifacts[artifact.name] = FileRecord.of(rel, payload)
        if self._captured is not None:
            self._captured.append((artifact.name, payload))
        return path

    # -- the pipeline -----------------------------------------------------------------------
    def begin(self) -> tuple[FrozenContext, Any]:
        exp = self.experiment
        ctx = FrozenContext._for_unit(
            exp.initial_ctx, condition=self.task.condition, replicate=self.task.replicate,
            seed=self.task.seed,
        )
        treatment = exp.treatment_map.get(self.task.condition)
        if treatment is not None:
            treatment.apply(ctx)
        exp.seed_plugin.apply(self.task.seed)
        for plugin in exp.plugins:
            plugin.before_replicate(exp, ctx)
        return ctx, exp.datasource.fetch(ctx)

    def arguments(self, step: PipelineStep, data: Any, ctx: FrozenContext) -> tuple[Any, ...]:
        self._step = step
        for plugin in self.experiment.plugins:
            plugin.before_step(self.experiment, step)
        return step.leading_args(data, ctx)

    def bind(self, alias: str, given: Artifact | None) -> Artifact:
        artifact = given if given is not None else self.experiment.output_for(alias)
        return artifact.bind(self)

    def absorb(self, step: PipelineStep, result: Any, ctx: FrozenContext, started: float) -> Any:
        """Record a step's result; returns the data for the next step."""
        data, metrics = result, None
        if isinstance(result, tuple):
            if len(result) != 2 or not isinstance(result[1], Mapping):
                raise TypeError(
                    f"step {step.fn.__name__!r} returned a {len(result)}-tuple "
                    f"{_short(result)}; a step returns its data, or (data, {{metric: value}}) "
                    "with the metrics in a dict. Return (data, {'score': score}) to record "
                    "metrics, or [a, b] (or ((a, b), {})) to pass a tuple on as data"
                )
            data, metrics = result
        if metrics:
            for name, value in metrics.items():
                ctx.record(name, value)
        self.outcome.steps.append((step.name, time.perf_counter() - started))
        for plugin in self.experiment.plugins:
            plugin.after_step(self.experiment, step, data, ctx)
        self._step = None
        return data

    def check_outputs(self) -> None:
        """Fail a unit whose steps received an output but did not write it.

        Consumers read one file per replicate: a replicate without it would be published as
        complete with a hole that surfaces only downstream.
        """
        exp = self.experiment
        for step in exp.pipeline.steps:
            for param in step.artifact_params:
                given: Any = step.params.get(param)
                name = (given if is_artifact(given) else exp.output_for(param)).name
                if name not in self.outcome.artifacts:
                    missing = self.version_path / self._relative(step.name, name)
                    raise RuntimeError(
                        f"step {step.fn.__name__!r} did not write output {name!r} in replicate "
                        f"{self.task.replicate} of condition {self.task.condition!r} (missing "
                        f"path: {missing}); every unit must write it ({param}.write(obj)), "
                        "since consumers read it for each replicate"
                    )

    def fail(self, exc: BaseException) -> None:
        if not isinstance(exc, Exception):
            where = f"step {self._step.fn.__name__!r}" if self._step else "the datasource"
            what = (f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit)
                    else "raised KeyboardInterrupt")
            cause = exc
            exc = RuntimeError(
                f"{where} {what}, which ends only this unit; to fail a unit, raise an exception"
            )
            exc.__cause__ = cause
        text = format_traceback(exc)
        # On the exception itself, so the text crosses a process boundary with it (pickling
        # keeps an exception's attributes but drops its frames).
        with contextlib.suppress(AttributeError, TypeError):
            exc.traceback_text = text  # type: ignore[attr-defined]
        self.outcome.error = portable(exc)
        self.outcome.traceback = text

    def finish(self, ctx: FrozenContext | None) -> UnitOutcome:
        if ctx is not None:
            self.outcome.metrics = ctx.metrics
            self.outcome.unread = ctx._unread_treated_keys()
        self.outcome.wall = time.perf_counter() - self.started
        self.outcome.cpu = time.thread_time() - self._c0
        self.outcome.finished = time.time()
        return self.outcome


def timed_out(task: UnitTask, experiment: str, seconds: float, what: str) -> TimeoutError:
    return TimeoutError(
        f"experiment {experiment!r}, condition {task.condition!r}, replicate {task.replicate}: "
        f"{what} took longer than its timeout of {seconds:g} s and was stopped"
    )


def _limit(run: UnitRun, step: PipelineStep) -> tuple[float, TimeoutError] | None:
    """Seconds ``step`` may still run (its own timeout or what is left of its unit's), and
    the error to fail it with then; None without a limit."""
    exp = run.experiment
    limits = []
    if step.timeout is not None:
        limits.append((step.timeout, step.timeout, f"step {step.fn.__name__!r}"))
    if exp.timeout is not None:
        left = exp.timeout - (time.perf_counter() - run.started)
        limits.append((left, exp.timeout, f"the unit (in step {step.fn.__name__!r})"))
    if not limits:
        return None
    seconds, total, what = min(limits)
    return seconds, timed_out(run.task, exp.name or "", total, what)


@contextmanager
def _time_limit(run: UnitRun, step: PipelineStep) -> Iterator[None]:
    """Interrupt ``step`` with :class:`TimeoutError` when its or its unit's timeout expires.

    A timer signal can only interrupt the main thread of a process: that is where process
    workers and the inline executor run units. Elsewhere (threads, Dask) the scheduler enforces
    the unit's timeout from outside.
    """
    limit = _limit(run, step)
    if (limit is None or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return
    seconds, error = limit
    if seconds <= 0:
        raise error

    def expire(signum: int, frame: Any) -> None:
        raise error

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _worker_id() -> str:
    return f"{host_name()}:{os.getpid()}:{threading.get_native_id()}"


def _retried(attempts: list[UnitOutcome]) -> UnitOutcome:
    """The last attempt's outcome, telling how many attempts it took and what failed before."""
    last = attempts[-1]
    last.started = attempts[0].started
    last.wall = sum(o.wall for o in attempts)
    last.cpu = sum(o.cpu for o in attempts)
    last.attempts = len(attempts)
    last.retried = [f"{type(o.error).__name__}: {o.error}" for o in attempts[:-1]]
    return last


def _call_step(run: UnitRun, step: PipelineStep, data: Any, ctx: FrozenContext) -> Any:
    with _time_limit(run, step):
        return _call_step_now(run, step, data, ctx)


def _call_step_now(run: UnitRun, step: PipelineStep, data: Any, ctx: FrozenContext) -> Any:
    args = run.arguments(step, data, ctx)
    if step.cacheable and run.task.cache_dir:
        from ..store import StepCache

        return StepCache(Path(run.task.cache_dir)).call(run, step, data, ctx, args)
    return step.fn(*args, **step.resolve(ctx, run.bind))


def _caught(exc: BaseException) -> bool:
    """Whether ``exc``, raised inside a unit, is that unit's failure rather than the run's.

    ``sys.exit()`` in a step is. So is a ``KeyboardInterrupt``, except in the main thread of the
    process driving the run (the inline executor, async steps): there it may be the user's
    Ctrl-C, which must stop the whole run.
    """
    if isinstance(exc, (Exception, SystemExit)):
        return True
    return isinstance(exc, KeyboardInterrupt) and not (
        threading.current_thread() is threading.main_thread()
        and multiprocessing.parent_process() is None
    )


def run_unit(experiment: Experiment, task: UnitTask) -> UnitOutcome:
    """Execute one unit synchronously, retrying a failure up to ``experiment.retries`` times;
    never raises for errors inside the unit."""
    attempts = [_run_once(experiment, task)]
    while attempts[-1].error is not None and len(attempts) <= experiment.retries:
        attempts.append(_run_once(experiment, task))
    return _retried(attempts)


def _run_once(experiment: Experiment, task: UnitTask) -> UnitOutcome:
    run = UnitRun(experiment, task)
    ctx = None
    try:
        with unit_scope(run):
            ctx, data = run.begin()
            for step in experiment.pipeline.steps:
                started = time.perf_counter()
                data = run.absorb(step, _call_step(run, step, data, ctx), ctx, started)
            run.check_outputs()
    except BaseException as exc:
        if not _caught(exc):
            raise
        run.fail(exc)
    return run.finish(ctx)


async def arun_unit(experiment: Experiment, task: UnitTask) -> UnitOutcome:
    """Execute one unit of a pipeline with ``async`` steps on the running event loop.

    Async steps are awaited here, so many units overlap; sync steps of the same pipeline run in
    a worker thread so they do not stall the loop. Retries as :func:`run_unit` does.
    """
    attempts = [await _arun_once(experiment, task)]
    while attempts[-1].error is not None and len(attempts) <= experiment.retries:
        attempts.append(await _arun_once(experiment, task))
    return _retried(attempts)


async def _arun_once(experiment: Experiment, task: UnitTask) -> UnitOutcome:
    run = UnitRun(experiment, task)
    ctx = None
    try:
        # A task of its own, so the scope is this unit's alone; worker threads copy it.
        with unit_scope(run):
            ctx, data = run.begin()
            for step in experiment.pipeline.steps:
                started = time.perf_counter()
                if step.is_async:
                    args = run.arguments(step, data, ctx)
                    limit = _limit(run, step)
                    with anyio.move_on_after(limit[0] if limit else None) as scope:
                        result = await step.fn(*args, **step.resolve(ctx, run.bind))
                    if limit is not None and scope.cancelled_caught:
                        raise limit[1]
                else:
                    result = await anyio.to_thread.run_sync(_call_step, run, step, data, ctx)
                data = run.absorb(step, result, ctx, started)
            run.check_outputs()
    except BaseException as exc:
        if not _caught(exc):
            raise
        run.fail(exc)
    return run.finish(ctx)
