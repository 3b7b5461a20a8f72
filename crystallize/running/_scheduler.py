"""The graph scheduler: one anyio task group runs the whole graph.

Every experiment gets a task that waits for its upstreams, then plans, dispatches and publishes
its run. Units from all running experiments go into one priority queue drained by as many
dispatcher tasks as the executor has workers, so independent branches, conditions and
replicates overlap freely and no experiment waits for an unrelated one (there are no
level-by-level barriers). Units on the longest remaining path (weighted by unit count) go first.
Pipelines with ``async`` steps do not use the queue: their units run on the event loop
concurrently.

Units that prove much shorter than a round trip is worth (measured on the first ones) travel
to out-of-process executors in batches of about ``Executor.batch_seconds`` of work, never so
large that the workers would not all get a share of what is left; to the process and Dask
executors a batch may carry units of several experiments.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import heapq
import itertools
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from ..errors import CallbackError, ExecutorError, ExperimentFailedError
from ..fingerprint import snapshot
from ..model import Event, Treatment, check_replicates, check_strategy
from ..store import LeaseBook, keep_code, recall_code
from ._configure import configure
from ._executors import Executor, ThreadExecutor, UnitJob, resolve_executor
from ._lane import StoreLane
from ._node import ExperimentRun, ExperimentRunFailed, NodeInputs
from ._preflight import check_treatment_keys, global_rng_warnings
from ._unit import UnitOutcome, UpstreamView

if TYPE_CHECKING:
    from ..experiment import Experiment, ExperimentGraph
    from ..model import Result

#: The most units one batch carries, however small they are.
MAX_BATCH = 256


@dataclass
class RunOptions:
    """Options of one ``run``/``arun`` call, validated."""

    treatments: list[Treatment] | None
    replicates: int | None
    strategy: str | None
    executor: Executor
    on_event: Callable[[Event], Any] | None
    #: experiments rerun whatever their strategy, with everything downstream of them
    force: frozenset[str] = frozenset()
    #: stop the whole run at the first failed unit
    fail_fast: bool = False

    @classmethod
    def build(
        cls, *, treatments: Iterable[Treatment] | None, replicates: int | None,
        strategy: str | None, executor: str | Executor | None, max_workers: int | None,
        on_event: Callable[[Event], Any] | None, force: Iterable[str] = (),
        fail_fast: bool = False,
    ) -> RunOptions:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError(f"max_workers must be a whole number >= 1, got {max_workers!r}")
        return cls(
            treatments=None if treatments is None else list(treatments),
            replicates=None if replicates is None else check_replicates(replicates, "run()"),
            strategy=None if strategy is None else check_strategy(strategy, "run()"),
            executor=resolve_executor(executor, max_workers),
            on_event=on_event, force=frozenset(force), fail_fast=bool(fail_fast),
        )


class _Outcome:
    """Where a dispatched unit's outcome is delivered."""

    __slots__ = ("stream",)

    def __init__(self, stream: MemoryObjectSendStream[UnitOutcome]) -> None:
        self.stream = stream


def _matched(executor: Executor, jobs: list[UnitJob],
             outcomes: list[UnitOutcome]) -> list[UnitOutcome]:
    """``outcomes``, if they name the units of ``jobs`` one for one and in order; else an error
    outcome for each unit, rather than results recorded under units they do not belong to.

    Outcomes carry their unit's condition and replicate, not its experiment: units of two
    experiments with the same ones, swapped, pass (the executors keep them by position)."""
    if len(outcomes) == len(jobs) and all(
            o.condition == j.task.condition and o.replicate == j.task.replicate
            for j, o in zip(jobs, outcomes, strict=True)):
        return outcomes
    error = ExecutorError(
        f"{type(executor).__name__}.run_batch returned {len(outcomes)} outcome(s) for "
        f"{len(jobs)} unit(s), not one per unit in the order given; these units are failed "
        "rather than given one another's results. Fix the executor: each unit's outcome "
        "belongs at its unit's place"
    )
    return [UnitOutcome(j.task.condition, j.task.replicate, error=error) for j in jobs]


class Scheduler:
    """Runs one graph once; create a new one per run."""

    def __init__(self, graph: ExperimentGraph, options: RunOptions) -> None:
        self.graph = graph
        self.options = options
        self.executor = options.executor
        #: stored with every version this run writes, so a report can find the run's versions
        self.run_id = uuid.uuid4().hex
        self.results: dict[str, Result] = {}
        self.failures: dict[str, str] = {}
        #: the exception behind each failure, for ``ExperimentFailedError.__cause__``
        self._causes: dict[str, BaseException] = {}
        self._done = {name: anyio.Event() for name in graph.experiments}
        self._configured = configure(
            graph, treatments=options.treatments, replicates=options.replicates,
            strategy=options.strategy, force=options.force,
        )
        self._heap: list[tuple[float, int, UnitJob, _Outcome]] = []
        self._seq = itertools.count()
        self._ready = anyio.Semaphore(0)
        self._books: dict[Path, LeaseBook] = {}
        #: each store root as given, resolved
        self._resolved: dict[Path, Path] = {}
        self._background: TaskGroup | None = None
        self._store_lane = StoreLane()
        self._rank: dict[str, float] = {}
        self._queued: dict[str, int] = {}
        self._queued_total = 0
        #: per experiment: units finished so far and their total wall time in the workers
        self._walls: dict[str, tuple[int, float]] = {}
        #: the same, over the whole run
        self._run_walls: tuple[int, float] = (0, 0.0)
        self._scope: anyio.CancelScope | None = None  # the whole run's, made by run()
        self._callback_error: CallbackError | None = None
        self._nodes: TaskGroup | None = None
        #: why the run stopped early (``fail_fast``), once it has
        self.stopped: str | None = None
        self._roots: list[Path] | None = None  # every store root of the run, once started
        self._rng_warnings: dict[str, str] = {}
        self._views: dict[str, tuple[Result, UpstreamView]] = {}

    # -- priorities -------------------------------------------------------------------------
    def _rank_nodes(self) -> None:
        """Longest remaining path from each node, weighted by its unit count."""
        order = self.graph.topological_order()
        for name in reversed(order):
            exp = self.graph.experiments[name]
            weight = (len(exp.treatments) + 1) * (self.options.replicates or exp.replicates)
            below = [self._rank[c] for c in self.graph.downstream(name)]
            self._rank[name] = weight + (max(below) if below else 0)

    # -- the store ------------------------------------------------------------------------
    def book(self, root: Path) -> LeaseBook:
        """This run's lease book for a store root (opened on first use)."""
        book = self._books.get(root)
        if book is None:
            book = self._books[root] = LeaseBook(root)
        return book

    def _store_roots(self) -> list[Path]:
        """Every store root this run reads or writes (the step cache lives inside them)."""
        for exp in self.graph.experiments.values():
            root = exp.store_plugin.root_dir
            if root not in self._resolved:  # once per root, however many experiments share it
                self._resolved[root] = root.resolve()
        return sorted(set(self._resolved.values()))

    def discard(self, paths: list[Path]) -> None:
        """Delete retired version directories in the background."""
        if paths and self._background is not None:
            for path in paths:
                remove = functools.partial(shutil.rmtree, path, ignore_errors=True)
                self._background.start_soon(anyio.to_thread.run_sync, remove)

    # -- events -----------------------------------------------------------------------------
    def emit(self, exp: Experiment, event: Event) -> None:
        callbacks: list[tuple[str, Callable[[], Any]]] = [
            (f"plugin {type(p).__name__}.on_event", functools.partial(p.on_event, exp, event))
            for p in exp.plugins
        ]
        if self.options.on_event is not None:
            callback = self.options.on_event
            label = getattr(callback, "__qualname__", None) or repr(callback)
            callbacks.append((f"on_event callback {label}", functools.partial(callback, event)))
        for label, call in callbacks:
            try:
                call()
            except Exception as exc:
                # Stop the run and report the callback itself, once, after the task groups
                # have unwound (an error raised here would escape as an ExceptionGroup).
                if self._callback_error is None:
                    self._callback_error = CallbackError(
                        f"{label} raised {type(exc).__name__}: {exc} (on a {event.kind!r} event "
                        f"of experiment {event.experiment!r}); the run was stopped. Fix the "
                        "callback: it must not raise"
                    )
                    self._callback_error.__cause__ = exc
                    if self._scope is not None:
                        self._scope.cancel()

    def stop(self, exp: Experiment, unit: str, error: str) -> None:
        """``fail_fast``: end the run because ``unit`` of ``exp`` failed with ``error``."""
        if self.stopped is not None or self._nodes is None:
            return
        name = exp.name or ""
        self.stopped = f"stopped after {name} [{unit}] failed (fail-fast)"
        self.failures[name] = f"{unit} failed: {error}"
        self.emit(exp, Event("failed", name, error=self.failures[name]))
        self._nodes.cancel_scope.cancel()

    # -- the unit queue ---------------------------------------------------------------------
    def submit(self, experiment: str, job: UnitJob, stream: MemoryObjectSendStream[UnitOutcome]):
        """Queue one unit; its outcome is sent to ``stream`` when it finishes."""
        priority = -self._rank.get(experiment, 0)
        heapq.heappush(self._heap, (priority, next(self._seq), job, _Outcome(stream)))
        self._queued[experiment] = self._queued.get(experiment, 0) + 1
        self._queued_total += 1
        self._ready.release()

    def batch_size(self, experiment: str) -> int:
        """How many queued units the next trip to a worker should carry, starting with one of
        ``experiment``'s: about the executor's ``batch_seconds`` of work as its finished units
        measure it, and never so many that some worker would get no share of what is queued
        (unless each share would be under a tenth of that).

        An executor that takes several experiments' units per trip is handed any small units
        queued, and measures an experiment by the whole run's units (from the first to finish)
        until two of its own have: a graph of many one-unit experiments (a fan of tiny nodes)
        has no other, and its first unit, which pays for warming a worker up, errs on the side
        of small batches.
        """
        if not self.executor.batching:
            return 1
        count, wall = self._walls.get(experiment, (0, 0.0))
        queued, needed = self._queued.get(experiment, 0), 2
        if self.executor.mixed_batches:
            queued = self._queued_total
            if count < 2:
                (count, wall), needed = self._run_walls, 1
        if count < needed:
            return 1
        by_time = int(self.executor.batch_seconds * count / max(wall, 1e-9))
        # Shares keep every worker busy to the end, but no share is smaller than a tenth of a
        # batch: below that, the trips would cost more than the balance gains.
        by_share = max(queued // (2 * self.executor.capacity), by_time // 10)
        return max(1, min(by_time, by_share, MAX_BATCH))

    def _joins(self, job: UnitJob, first: UnitJob) -> bool:
        """Whether ``job`` may travel in the batch that ``first`` starts."""
        if job.experiment is first.experiment:
            return True
        return (self.executor.mixed_batches and job.experiment.unit_timeout is None
                and self.batch_size(job.experiment.name or "") > 1)

    async def _dispatcher(self) -> None:
        while True:
            await self._ready.acquire()
            _, _, job, target = heapq.heappop(self._heap)
            name = job.experiment.name or ""
            batch = [(job, target)]
            # A unit with a timeout travels alone, so that stopping it stops nothing else.
            limit = job.experiment.unit_timeout
            size = 1 if limit is not None else self.batch_size(name)
            # Units of one experiment have one priority, so they sit together at the top.
            heap = self._heap
            while len(batch) < size and heap and self._joins(heap[0][2], job):
                try:
                    self._ready.acquire_nowait()
                except anyio.WouldBlock:
                    break  # the units left are each owed to a dispatcher woken for it
                batch.append(heapq.heappop(heap)[2:])
            jobs = [j for j, _ in batch]
            for j in jobs:
                self._queued[j.experiment.name or ""] -= 1
            self._queued_total -= len(jobs)
            try:
                if limit is not None:
                    outcomes = [await self.executor.run_within(job, limit)]
                else:
                    outcomes = await self.executor.run_batch(jobs)
            except Exception as exc:  # the executor itself failed for these units
                outcomes = [UnitOutcome(j.task.condition, j.task.replicate, error=exc)
                            for j in jobs]
            outcomes = _matched(self.executor, jobs, outcomes)
            for j, outcome in zip(jobs, outcomes, strict=True):
                count, wall = self._walls.get(j.experiment.name or "", (0, 0.0))
                self._walls[j.experiment.name or ""] = (count + 1, wall + outcome.wall)
            count, wall = self._run_walls
            self._run_walls = (count + len(outcomes), wall + sum(o.wall for o in outcomes))
            for (_, out), outcome in zip(batch, outcomes, strict=True):
                # A node that ended while its unit ran (fail-fast stopped the run, or it was
                # cancelled) has closed its stream: nobody reads this outcome any more.
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    out.stream.send_nowait(outcome)

    # -- running ----------------------------------------------------------------------------
    def _blocked(self, name: str, exp: Experiment) -> bool:
        """Whether an upstream of ``name`` failed or was skipped (then it is skipped too)."""
        blocked = [p for p in self.graph.upstream(name) if p not in self.results
                   or self.results[p].failed]
        if not blocked:
            return False
        why = ", ".join(f"{p} {'failed' if p in self.failures else 'was skipped'}" for p in blocked)
        reason = f"upstream {why}"
        self.failures[name] = f"skipped: {reason}"
        self.emit(exp, Event("skipped", name, reason=reason))
        return True

    def _experiment_run(self, name: str, exp: Experiment) -> ExperimentRun:
        inputs = NodeInputs(
            upstream_results={p: self.results[p] for p in self.graph.upstream(name)},
            book=self.book, executor=self.executor, emit=self.emit, submit=self.submit,
            discard=self.discard, run_id=self.run_id,
            stop=self.stop if self.options.fail_fast else None, views=self._views,
            store_lane=self._store_lane,
        )
        return ExperimentRun(inputs, exp, self._resolved.get(exp.store_plugin.root_dir))

    @contextlib.contextmanager
    def _recording(self, name: str, exp: Experiment) -> Iterator[None]:
        """Record the failure of ``name``'s run inside the block, if it fails."""
        try:
            yield
        except ExperimentRunFailed as exc:
            self.results[name] = exc.result
            self.failures[name] = exc.cause
            self._causes[name] = exc.error
            self.emit(exp, Event("failed", name, error=exc.cause))
        except Exception as exc:
            cause = f"{type(exc).__name__}: {exc}"
            self.failures[name] = cause
            self._causes[name] = exc
            self.emit(exp, Event("failed", name, error=cause))

    async def _node(self, name: str) -> None:
        try:
            for parent in self.graph.upstream(name):
                await self._done[parent].wait()
            exp = self._configured[name]
            if self._blocked(name, exp):
                return
            with self._recording(name, exp):
                self.results[name] = await self._experiment_run(name, exp).execute()
        finally:
            self._done[name].set()

    def _settle_node(self, name: str) -> bool:
        """:meth:`_node` without an event loop, for an experiment a resume reuses whole: whether
        it is done (reused, failed or skipped); if not, nothing was announced for it."""
        exp = self._configured[name]
        if self._blocked(name, exp):
            return True
        with self._recording(name, exp):
            result = self._experiment_run(name, exp).resume_unchanged()
            if result is None:
                return False
            self.results[name] = result
        return True

    def _check_store_roots(self) -> None:
        checked: set[Path] = set()
        for exp in self.graph.experiments.values():
            root = exp.store_plugin.root_dir
            if root in checked:
                continue
            checked.add(root)
            if root.exists() and not root.is_dir():
                raise NotADirectoryError(
                    errno.ENOTDIR, f"experiment {exp.name!r} stores its runs in {str(root)!r}, "
                    "which is a file, not a folder. Move the file away, or choose another "
                    "folder with ArtifactPlugin(root_dir=...)", str(root),
                )

    def _start(self) -> None:
        """What a run checks and announces once, before any experiment of it."""
        if self._roots is not None:
            return
        self._check_store_roots()
        self._rank_nodes()
        self._roots = self._store_roots()
        for root in self._roots:
            recall_code(root)
        check_treatment_keys(self._configured)  # before anything runs
        self._rng_warnings = global_rng_warnings(self._configured.values(),
                                                 isinstance(self.executor, ThreadExecutor))
        for name, warning in self._rng_warnings.items():
            self.emit(self._configured[name], Event("warning", name, reason=warning))
        if self._callback_error is not None:
            raise self._callback_error

    def _close(self) -> None:
        for book in self._books.values():
            book.close()
        keep_code(self._roots or [])

    def settle(self) -> dict[str, Result] | None:
        """Before any event loop starts: finish every experiment a resume reuses whole, upstreams
        first (and those skipped or failed because of them).

        A resume where nothing changed thus ends without an event loop, a worker pool or a
        thread hop, which on a small graph cost more than all its reading of the store. Returns
        the run's results if no experiment is left; else None, and :meth:`run` does the rest.
        """
        self._start()
        pending: set[str] = set()
        try:
            with snapshot():
                for name in self.graph.topological_order():
                    if (self._callback_error is not None
                            or any(p in pending for p in self.graph.upstream(name))
                            or self._configured[name].strategy != "resume"
                            or not self._settle_node(name)):
                        pending.add(name)
        except BaseException:
            self._close()
            raise
        for name in self.graph.experiments:
            if name not in pending:
                self._done[name].set()
        if pending and self._callback_error is None:
            return None
        self._close()
        return self._outcome()

    async def run(self) -> dict[str, Result]:
        self._start()
        try:
            # Nothing is edited mid-run, so each step function is fingerprinted once per run.
            with snapshot(), anyio.CancelScope() as self._scope:
                async with self.executor:
                    await self.executor.verify_store(self._roots or [])
                    async with anyio.create_task_group() as background:
                        self._background = background
                        async with anyio.create_task_group() as dispatchers:
                            executor = self.executor
                            for _ in range(max(1, executor.capacity + executor.lookahead)):
                                dispatchers.start_soon(self._dispatcher)
                            async with anyio.create_task_group() as nodes:
                                self._nodes = nodes
                                for name in self.graph.topological_order():
                                    if not self._done[name].is_set():  # not settled before
                                        nodes.start_soon(self._node, name)
                            dispatchers.cancel_scope.cancel()
        finally:
            self._close()
        return self._outcome()

    def _outcome(self) -> dict[str, Result]:
        """The run's results, or the error that lists its failed experiments."""
        if self._callback_error is not None:
            raise self._callback_error
        order = self.graph.topological_order()
        results = {name: self.results[name] for name in order if name in self.results}
        if self.stopped is not None:
            for name in order:
                if name not in self.results and name not in self.failures:
                    self.failures[name] = self.stopped
        for name, warning in self._rng_warnings.items():
            if name in results:
                results[name].warnings.insert(0, warning)
        if self.failures:
            first = next((self._causes[n] for n in order if n in self._causes), None)
            raise ExperimentFailedError(self.failures, results) from first
        return results
