"""Executors: where units run. One small interface, several transports.

An executor is an async context manager that lives for one whole graph run (so a process pool
is started once, not per experiment) and runs units through one abstract method,
:meth:`Executor.run_batch`. The scheduler decides what runs when; an executor only decides where.

- :class:`InlineExecutor`: in the calling thread, one unit at a time (debugging, tiny units);
- :class:`ThreadExecutor`: in a thread pool (steps that release the GIL, or do I/O);
- :class:`ProcessExecutor`: in a process pool (the default for CPU-bound Python steps);
- :class:`DaskExecutor`: on a ``dask.distributed`` cluster.

Note for ``ThreadExecutor``: Python's global :mod:`random` state is shared by all threads, so
steps that should give identical results on every executor draw from
``random.Random(ctx["seed"])`` rather than the module-level functions.
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import contextlib
import itertools
import multiprocessing
import os
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ..errors import WorkerKilledError
from ._futures import wait_future
from ._pool import WorkerDied, WorkerPool
from ._unit import (
    UnitOutcome,
    UnitTask,
    run_unit,
    timed_out,
)
from ._worker import Group, unpack_outcome

if TYPE_CHECKING:
    from ..experiment import Experiment

#: Seconds a process worker gets past its unit's timeout before it is stopped from outside.
KILL_GRACE = 1.0


@dataclass
class UnitJob:
    """A unit as the scheduler hands it to an executor."""

    experiment: Experiment
    task: UnitTask
    #: cloudpickled experiment, shared by all of its units (only for out-of-process executors)
    blob: bytes | None = None
    key: str = field(default_factory=lambda: uuid.uuid4().hex)

    def pickled(self) -> bytes:
        """The pickled experiment an out-of-process executor sends to its worker."""
        if self.blob is None:
            raise RuntimeError(f"a unit of {self.experiment.name!r} came without its pickle")
        return self.blob


def in_groups(jobs: list[UnitJob]) -> tuple[list[Group], list[int]]:
    """``jobs`` as one group per experiment, as a worker takes them (see
    :func:`~._worker.run_pickled_units`), and where each job's outcome is among theirs."""
    index: dict[str, int] = {}
    groups: list[Group] = []
    for job in jobs:
        if job.key not in index:
            index[job.key] = len(groups)
            groups.append((job.key, job.pickled(), []))
        groups[index[job.key]][2].append(job.task)
    starts = list(itertools.accumulate((len(tasks) for _, _, tasks in groups), initial=0))
    taken = [0] * len(groups)
    places = []
    for job in jobs:
        i = index[job.key]
        places.append(starts[i] + taken[i])
        taken[i] += 1
    return groups, places


class Executor(abc.ABC):
    """Base class of executors; see the module docstring.

    A subclass implements one method, :meth:`run_batch`: the round trip that runs units where
    the executor runs them. Everything else has a default.
    """

    #: Name shown in provenance and progress output.
    name: str = "executor"
    #: Whether one :meth:`run_batch` call may carry units of several experiments (else the
    #: scheduler batches only units of one).
    mixed_batches: bool = False
    #: Whether units cross a process boundary (and must be pickled).
    out_of_process: bool = False
    #: How much work (units' wall time where they run) one batch should carry: enough that
    #: what a trip itself costs is small beside it.
    batch_seconds: float = 0.05

    def __init__(self, max_workers: int | None = None, *, batching: bool = False) -> None:
        self.max_workers = max_workers or os.cpu_count() or 1
        #: Whether the scheduler may send several small units per :meth:`run_batch` call
        #: (worth it only where each call is a round trip).
        self.batching = batching

    @property
    def capacity(self) -> int:
        """How many units this executor can usefully run at once."""
        return self.max_workers

    @property
    def lookahead(self) -> int:
        """How many units to hand over beyond :attr:`capacity`.

        Executors whose units travel to other processes hold one unit ready per worker, so a
        worker that finishes gets its next unit at once (sent as soon as its reply is read)
        instead of after a pass of that unit through the scheduler's queue.
        """
        return self.max_workers if self.out_of_process else 0

    async def __aenter__(self) -> Executor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def verify_store(self, roots: list[Path]) -> None:  # noqa: B027 - optional hook
        """Make sure every worker sees the store roots ``roots`` before any unit runs (raise
        if not). Called once per run, after entering. Does nothing unless overridden: the
        in-machine executors share the client's filesystem."""

    def warm(self) -> None:  # noqa: B027 - optional hook, most executors need nothing
        """Get ready for units now: called once an experiment of the run will execute, just
        before the run first hands work to threads. Does nothing unless overridden."""

    async def run(self, job: UnitJob) -> UnitOutcome:
        """Run one unit to completion and return its outcome (by default, a batch of one)."""
        return (await self.run_batch([job]))[0]

    async def run_within(self, job: UnitJob, seconds: float) -> UnitOutcome:
        """Run one unit that may take at most ``seconds``; past that it fails with
        :class:`TimeoutError` and the rest of the run goes on.

        By default the unit is abandoned where it runs (a thread cannot be stopped); the
        process executor stops the unit's worker instead.
        """
        with anyio.move_on_after(seconds):
            return await self.run(job)
        return _timed_out(job, seconds)

    @abc.abstractmethod
    async def run_batch(self, jobs: list[UnitJob]) -> list[UnitOutcome]:
        """Run units and return their outcomes, one per unit, each at its unit's place (the
        scheduler fails a batch whose outcomes do not name its units in order, with
        :class:`~crystallize.errors.ExecutorError`).

        The scheduler hands over more than one only where :attr:`batching` is on (the process
        and Dask executors, unless created with ``batching=False``), and only units it has seen
        to be much shorter than a batch, so that one trip to a worker serves them all; units of
        several experiments only where :attr:`mixed_batches` is on.
        """


def _timed_out(job: UnitJob, seconds: float) -> UnitOutcome:
    error = timed_out(job.task, job.experiment.name or "", seconds, "the unit")
    return UnitOutcome(job.task.condition, job.task.replicate, error=error)


class InlineExecutor(Executor):
    """Runs each unit in the calling thread, one at a time."""

    name = "inline"

    @property
    def capacity(self) -> int:
        return 1

    async def run_batch(self, jobs: list[UnitJob]) -> list[UnitOutcome]:
        outcomes = []
        for job in jobs:
            outcomes.append(run_unit(job.experiment, job.task))
            await anyio.lowlevel.checkpoint()  # let the scheduler make progress between units
        return outcomes

    async def run_within(self, job: UnitJob, seconds: float) -> UnitOutcome:
        # Units run in this (the main) thread, where the unit's own timer interrupts them.
        return await self.run(job)


class ThreadExecutor(Executor):
    """Runs units in worker threads (``max_workers`` at once)."""

    name = "thread"

    async def __aenter__(self) -> ThreadExecutor:
        self._limiter = anyio.CapacityLimiter(self.max_workers)
        return self

    async def run_batch(self, jobs: list[UnitJob]) -> list[UnitOutcome]:
        return [await self._in_thread(job, abandon=False) for job in jobs]

    async def run_within(self, job: UnitJob, seconds: float) -> UnitOutcome:
        # The thread cannot be stopped: it is left to finish on its own, its outcome unused.
        with anyio.move_on_after(seconds):
            return await self._in_thread(job, abandon=True)
        return _timed_out(job, seconds)

    async def _in_thread(self, job: UnitJob, *, abandon: bool) -> UnitOutcome:
        return await anyio.to_thread.run_sync(
            run_unit, job.experiment, job.task, limiter=self._limiter, abandon_on_cancel=abandon
        )


def _default_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds and inherits sys.path and logging; elsewhere (macOS,
    # Windows) spawn is the only safe choice. cloudpickle carries the user's functions either way.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


class ProcessExecutor(Executor):
    """Runs units in one process pool that lives for the whole graph run.

    On cancellation (Ctrl-C, an enclosing cancel scope) the worker processes are terminated, so
    a long unit does not keep running after the caller has given up. ``batching=False`` sends
    every unit on its own trip to a worker, however small (see :meth:`Executor.run_batch`).
    """

    name = "process"
    out_of_process = True
    mixed_batches = True

    def __init__(
        self, max_workers: int | None = None, mp_context: Any | None = None, *,
        batching: bool = True,
    ) -> None:
        super().__init__(max_workers, batching=batching)
        self.mp_context = mp_context or _default_context()
        self._pool: WorkerPool | None = None

    async def __aenter__(self) -> ProcessExecutor:
        self._pool = WorkerPool(self.max_workers, self.mp_context)
        return self

    def warm(self) -> None:
        # Fork every worker now, while this run has no other threads: a process forked while
        # another thread holds a lock can deadlock (Python 3.12 warns). Not at __aenter__, so
        # that a run needing no worker (a full resume, async steps only) forks nothing.
        if self._pool is not None:
            self._pool.start()

    async def __aexit__(self, *exc_info: object) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if exc_info[0] is not None:
            pool.terminate()
        else:
            await pool.aclose()

    @staticmethod
    async def _trip(pool: WorkerPool, jobs: list[UnitJob]) -> list[UnitOutcome]:
        """One round trip to a worker of ``pool`` for ``jobs``."""
        groups, places = in_groups(jobs)
        packed = await pool.call(groups)
        return [unpack_outcome(packed[i]) for i in places]

    async def run_batch(self, jobs: list[UnitJob]) -> list[UnitOutcome]:
        pool = self._pool
        assert pool is not None, "ProcessExecutor used outside 'async with'"
        try:
            return await self._trip(pool, jobs)
        except WorkerDied:
            # A worker died (killed, out of memory, a crash in C code) with these units; the
            # pool replaces it. Retry each alone in a new process, so that only a unit that
            # kills its own worker is blamed and the units that merely shared it still finish.
            return [await self._alone(job) for job in jobs]

    async def run_within(self, job: UnitJob, seconds: float) -> UnitOutcome:
        # In its own process, so that stopping it stops no other unit. The unit's own timer
        # (see unit.py) normally fails it first, naming the step; the grace is for code that
        # does not return to Python (a call into C) when the timer fires.
        return await self._alone(job, seconds + KILL_GRACE)

    async def _alone(self, job: UnitJob, seconds: float | None = None) -> UnitOutcome:
        alone = WorkerPool(1, self.mp_context)
        try:
            with anyio.move_on_after(seconds):
                return (await self._trip(alone, [job]))[0]
            assert seconds is not None
            return _timed_out(job, seconds - KILL_GRACE)
        except WorkerDied as exc:
            error = RuntimeError(f"worker process died while running this unit, twice: {exc}")
            return UnitOutcome(job.task.condition, job.task.replicate, error=error)
        finally:
            alone.terminate()


#: How many times a batch is sent again after landing on a worker blind to the store.
BLIND_RETRIES = 3


class DaskExecutor(Executor):
    """Runs units on a ``dask.distributed`` cluster.

    Pass an existing ``Client``, a scheduler ``address`` or a ``scheduler_file``; with none,
    Dask's own configuration (``DASK_SCHEDULER_ADDRESS``, ``scheduler-address``) is honoured,
    and without that a ``LocalCluster`` of ``max_workers`` single-threaded worker processes is
    started for the run. A cluster with no workers is waited for up to ``wait_for_workers``
    seconds (``say`` is told so).

    Before any unit runs, every worker must prove it sees the store (workers joining later
    too, before they get a unit); a worker lost mid-run has its units re-run elsewhere and
    named in their outcomes; a unit that kills its worker each time it runs fails alone.
    """

    name = "dask"
    out_of_process = True
    mixed_batches = True
    # A trip costs the client and the scheduler milliseconds of CPU in Dask's own code (a
    # process pool's whole round trip takes about half a millisecond), taken from the workers
    # where they share a machine.
    batch_seconds = 0.25

    def __init__(
        self, client: Any | None = None, *, address: str | None = None,
        scheduler_file: str | None = None, max_workers: int | None = None,
        batching: bool = True, wait_for_workers: float = 60.0,
        say: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(max_workers, batching=batching)
        if address is not None and scheduler_file is not None:
            raise ValueError("DaskExecutor: pass address= or scheduler_file=, not both")
        self.client: Any = client
        self.address = address
        self.scheduler_file = scheduler_file
        self.wait_for_workers = wait_for_workers
        self.say = say or (lambda message: None)
        self._owned: list[Any] = []
        self._target: Any = None
        self._probe: Any = None
        self._watch: Any = None
        self._undo_send: Callable[[], None] | None = None
        self._quarantine: anyio.Lock  # made per run, in __aenter__
        #: workers that joined mid-run blind to the store, and what they could not see
        self._blind: dict[str, str] = {}

    async def __aenter__(self) -> DaskExecutor:
        try:
            from distributed import Client, LocalCluster

            from . import _dask as dc
        except ImportError as exc:
            raise ImportError(
                "executor='dask' needs dask.distributed: pip install 'crystallize[dask]'"
            ) from exc
        self._watch = dc.ClusterWatch()
        self._quarantine = anyio.Lock()
        self._blind = {}
        if self.client is None:
            target = self._target = dc.resolve_target(self.address, self.scheduler_file)
            if target is None:
                def local() -> Any:
                    cluster = LocalCluster(
                        n_workers=self.max_workers, threads_per_worker=1, processes=True,
                        dashboard_address=None,
                    )
                    self._owned.append(cluster)
                    return Client(cluster, set_as_default=False)

                self.client = await anyio.to_thread.run_sync(local)
            else:
                # A peer that accepts but never answers hangs Dask's handshake forever: give up
                # on it, in a daemon thread that cannot keep the process from exiting.
                waited = dc.HANDSHAKE_FACTOR * dc.connect_timeout()
                connecting: cf.Future[Any] = cf.Future()
                threading.Thread(target=_settle, args=(connecting, dc.connect, target),
                                 name="crystallize-dask-connect", daemon=True).start()
                with anyio.move_on_after(waited):
                    self.client = await wait_future(connecting)
                if self.client is None:
                    raise dc.not_a_scheduler(target, waited)
            self._owned.insert(0, self.client)
        else:
            self._target = dc.Target(str(self.client.scheduler.address), "the given Client")
        try:
            workers = await anyio.to_thread.run_sync(
                dc.wait_for_workers, self.client, self._target, self.wait_for_workers, self.say)
            self.client.subscribe_topic("all", self._watch.handle)
            self._undo_send = dc.send_promptly(self.client)
        except BaseException:
            await self._close()
            raise
        self.max_workers = workers
        return self

    async def verify_store(self, roots: list[Path]) -> None:
        from . import _dask as dc

        probe = self._probe = dc.StoreProbe(roots)
        await anyio.to_thread.run_sync(probe.write)
        await anyio.to_thread.run_sync(probe.verify, self.client, self._target)

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _close(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            await anyio.to_thread.run_sync(probe.remove)
            await anyio.to_thread.run_sync(probe.unregister, self.client)
        undo, self._undo_send = self._undo_send, None
        if undo is not None:
            undo()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic("all")
        owned, self._owned = self._owned, []
        for obj in owned:
            await anyio.to_thread.run_sync(obj.close)
        if owned:
            self.client = None

    async def _trip(self, jobs: list[UnitJob], lost: list[str]) -> list[UnitOutcome]:
        """One task on the cluster for ``jobs``; ``lost``: workers lost on earlier tries."""
        from distributed import KilledWorker

        from . import _dask as dc

        groups, places = in_groups(jobs)
        check = self._probe.plugin_name if self._probe is not None else None
        args = (groups, check)
        for _ in range(BLIND_RETRIES):
            # Workers found blind to the store are avoided where any other one is there.
            seeing = [w for w in self.client.scheduler_info().get("workers", {})
                      if w not in self._blind] if self._blind else []
            key = dc.trip_key()
            try:
                # Dask recomputes a result lost with its worker before the trip ends.
                worker, packed = await wait_future(dc.start_trip(self.client, key, args, seeing))
            except KilledWorker as exc:
                raise _Killed(exc, lost + self._watch.lost_during(key)) from None
            lost = lost + self._watch.lost_during(key)
            if not isinstance(packed, str):
                break
            self._blind[worker] = packed
        else:
            error = dc.blind_worker_error(worker, packed)
            return [UnitOutcome(j.task.condition, j.task.replicate, error=error) for j in jobs]
        outcomes = [unpack_outcome(packed[i]) for i in places]
        for job, outcome in zip(jobs, outcomes, strict=True):
            outcome.lost_workers = lost
            dc.check_outputs_visible(outcome, job.task, worker)
        return outcomes

    async def run_batch(self, jobs: list[UnitJob]) -> list[UnitOutcome]:
        return await self._run(jobs, [], 0)

    async def _run(self, jobs: list[UnitJob], lost: list[str], tries: int,
                   quarantined: bool = False) -> list[UnitOutcome]:
        """Run ``jobs``, sorting out which of them kills its worker.

        Dask fails every task that was on a worker each time it died (``KilledWorker``), also
        those that merely waited there beside the unit that kills it. So a batch that failed
        so splits into units that try again each on their own; a unit that failed so tries
        once more in quarantine, where no other quarantined unit runs beside it: only a unit
        that kills its worker fails there too.
        """
        try:
            if not quarantined:
                return await self._trip(jobs, lost)
            async with self._quarantine:
                return await self._trip(jobs, lost)
        except _Killed as killed:
            lost, tries = killed.lost, tries + killed.tries
            if quarantined:
                job = jobs[0]
                return [UnitOutcome(job.task.condition, job.task.replicate, lost_workers=lost,
                                    error=killed_worker_error(tries, killed))]
        if len(jobs) == 1:
            return await self._run(jobs, lost, tries, quarantined=True)
        # In the batch's order, by position: a batch may hold units of several experiments,
        # whose conditions and replicates can be the same.
        outcomes: list[UnitOutcome | None] = [None] * len(jobs)

        async def alone(place: int, job: UnitJob) -> None:
            outcomes[place] = (await self._run([job], lost, tries))[0]

        async with anyio.create_task_group() as tg:
            for place, job in enumerate(jobs):
                tg.start_soon(alone, place, job)
        return [o for o in outcomes if o is not None]


class _Killed(Exception):
    """A Dask task failed with ``KilledWorker``; carries the workers lost on the way."""

    def __init__(self, error: Any, lost: list[str]) -> None:
        super().__init__(str(error))
        self.tries = int(error.allowed_failures) + 1
        self.worker = str(error.last_worker.address)
        self.lost = lost


def _settle(future: cf.Future[Any], fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` and put its result, or its exception, into ``future``."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args)
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)


def killed_worker_error(tries: int, last: _Killed) -> WorkerKilledError:
    """The error of a unit whose worker process died every time it ran."""
    return WorkerKilledError(
        f"this unit killed its worker: the worker process running it died all {tries} times "
        f"it ran (Dask tries a task {last.tries} times, distributed.scheduler.allowed-failures "
        "+ 1; crystallize then tries it that often again on its own), the last on "
        f"{last.worker}. Something in it ends the process: os._exit, a crash in compiled "
        "code, running out of memory (see the worker's log)"
    )


_BY_NAME: dict[str, type[Executor]] = {
    "inline": InlineExecutor,
    "thread": ThreadExecutor,
    "process": ProcessExecutor,
    "dask": DaskExecutor,
}


def resolve_executor(executor: str | Executor | None, max_workers: int | None) -> Executor:
    """An executor object from a name (``"process"``, ``"thread"``, ``"inline"``, ``"dask"``)."""
    if isinstance(executor, Executor):
        return executor
    name = executor or "process"
    try:
        cls = _BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown executor {name!r}; use one of {sorted(_BY_NAME)} or an Executor object"
        ) from None
    return cls(max_workers=max_workers)
