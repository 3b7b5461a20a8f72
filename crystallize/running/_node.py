"""One experiment's run inside a graph run: plan, dispatch its units, aggregate, publish."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import cloudpickle
from filelock import FileLock, Timeout

from ..errors import HypothesisError, PicklingError, UnitError
from ..model import BASELINE, ConditionMetrics, Event, ExperimentMetrics, Result
from ..store import (
    CACHE_DIR,
    ConditionMeta,
    ConditionRecord,
    ExperimentStore,
    Journal,
    LeaseBook,
    Removal,
    Scan,
    StoredVersion,
    StoreWarning,
    UnitRecord,
    UnitTiming,
    VersionMetadata,
    VersionWriter,
    host_name,
    load_value,
    unusable_lock,
)
from ._executors import UnitJob
from ._lane import StoreLane
from ._preflight import unread_key_warnings
from ._resume import Plan, experiment_fingerprint, plan_run, treatment_fingerprint
from ._unit import UnitOutcome, UnitTask, UpstreamView, arun_unit

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectSendStream

    from ..experiment import Experiment
    from ._executors import Executor

#: The most units of one experiment queued or running at once.
UNIT_WINDOW = 4096


class ExperimentRunFailed(Exception):
    """Internal: the experiment failed; carries its partial result to the scheduler."""

    def __init__(self, cause: str, result: Result, error: BaseException) -> None:
        super().__init__(cause)
        self.cause = cause
        self.result = result
        self.error = error


async def acquire_lock(path: Path, on_wait: Callable[[], None]) -> FileLock:
    """Take a file lock without blocking the event loop (polls; cancellable).

    ``on_wait`` is called once if the lock is held by someone else, before waiting for it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0)
    delay = 0.005
    while True:
        try:
            lock.acquire()
            return lock
        except Timeout:
            if delay == 0.005:
                on_wait()
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.2)
        except PermissionError as exc:
            raise unusable_lock(path, exc) from None


def _find_unpicklable(exp: Experiment) -> str:
    """Name the part of ``exp`` that cloudpickle rejects, for the error message."""
    candidates: list[tuple[str, Any]] = [("datasource", exp.datasource)]
    for step in exp.pipeline.steps:
        candidates.append((f"step {step.name!r} function", step.fn))
        candidates += [(f"step {step.name!r} parameter {k!r}", v) for k, v in step.params.items()]
    for alias, art in exp.outputs.items():
        candidates += [(f"output {alias!r} loader", art.loader), (f"output {alias!r} writer",
                                                                   art.writer)]
    candidates += [(f"treatment {t.name!r}", t.apply_payload) for t in exp.treatments]
    candidates += [(f"plugin {type(p).__name__}", p) for p in exp.plugins]
    candidates += [(f"initial_ctx[{k!r}]", v) for k, v in exp.initial_ctx.items()]
    for label, obj in candidates:
        try:
            cloudpickle.dumps(obj)
        except Exception as exc:
            return f"{label} holds {obj!r}, which cannot be pickled ({exc})"
    return "an attribute of the experiment cannot be pickled"


def unit_record(outcome: UnitOutcome, seed: int) -> UnitRecord:
    """How the store keeps a unit's outcome."""
    # An outcome made outside a worker (the executor itself failed) has no timing to show.
    timing = UnitTiming(outcome.worker, outcome.started, outcome.finished, outcome.attempts,
                        tuple(outcome.retried)) if outcome.started else None
    if outcome.error is not None:
        error = f"{type(outcome.error).__name__}: {outcome.error}"
        return UnitRecord(outcome.replicate, "failed", seed, outcome.metrics, outcome.artifacts,
                          error, timing, outcome.traceback)
    return UnitRecord(outcome.replicate, "complete", seed, outcome.metrics, outcome.artifacts,
                      timing=timing, reads=outcome.reads)


def condition_record(
    condition: str, seeds: list[int], outcomes: dict[int, UnitOutcome],
    reused: dict[int, UnitRecord], earlier: Sequence[str], later: list[str],
) -> ConditionRecord:
    """A condition's record: executed units from ``outcomes``, the others from ``reused``, and
    the warnings of the records those came from (``earlier``), of the units that ran, and those
    found after the units ran (``later``)."""
    units = []
    for r, seed in enumerate(seeds):
        if r in outcomes:
            units.append(unit_record(outcomes[r], seed))
        elif r in reused:
            units.append(reused[r])
        else:
            units.append(UnitRecord(r, "never ran", seed))
    found = [*earlier, *(w for r in sorted(outcomes) for w in outcomes[r].warnings), *later]
    return ConditionRecord(condition, tuple(units), tuple(dict.fromkeys(found)))


def build_result(
    exp: Experiment, version: int | None, version_dir: Path, records: dict[str, ConditionRecord],
    *, executed: bool, errors: dict[str, BaseException], provenance: dict[str, Any],
    reason: str | None, reused: list[str], failed: bool = False,
    unit_reasons: dict[str, str] | None = None,
) -> Result:
    """The :class:`Result` for ``records`` — the same code whether executed or resumed."""
    metrics = ExperimentMetrics()
    for cond in exp.conditions:
        record = records.get(cond)
        values = ConditionMetrics.from_replicates(
            [u.metrics for u in record.units[: exp.replicates]] if record is not None else [])
        if cond == BASELINE:
            metrics.baseline = values
        else:
            metrics.treatments[cond] = values
    if exp.hypotheses and not failed:
        treat = {t: c.metrics for t, c in metrics.treatments.items()}
        metrics.hypotheses = [h.evaluate(metrics.baseline.metrics, treat) for h in exp.hypotheses]
    artifacts: dict[str, dict[str, list[Path | None]]] = {}
    for cond, record in records.items():
        for name, rels in record.artifact_paths().items():
            artifacts.setdefault(name, {})[cond] = [
                None if r is None else version_dir / r for r in rels[: exp.replicates]
            ]
    result = Result(
        experiment=exp.name or "", metrics=metrics, errors=errors, artifacts=artifacts,
        provenance=provenance, executed=executed, version=version, version_dir=version_dir,
        reason=reason, replicates=exp.replicates, reused=reused, failed=failed,
        warnings=[w for c in exp.conditions if c in records for w in records[c].warnings],
        unit_reasons=unit_reasons or {},
    )
    result.records = records
    return result


def upstream_view(result: Result) -> UpstreamView:
    """What a consumer's units need from an upstream result."""
    return UpstreamView(
        experiment=result.experiment,
        version=result.version or 0,
        path=str(result.version_dir),
        replicates=result.replicates,
        artifacts={c: {n: list(v[: result.replicates]) for n, v in r.artifact_paths().items()}
                   for c, r in result.records.items()},
        errors={c: {str(k): v for k, v in r.errors().items()}
                for c, r in result.records.items() if r.errors()},
        hashes={c: _hashes(r, result.replicates) for c, r in result.records.items()},
    )


def _hashes(record: ConditionRecord, replicates: int) -> dict[str, list[str | None]]:
    names = dict.fromkeys(n for u in record.units for n in u.artifacts)
    return {n: [(u.artifacts[n].blake2b if n in u.artifacts else None)
                for u in record.units[:replicates]] for n in names}


@dataclass(frozen=True)
class NodeInputs:
    """All one experiment's run receives from the graph run around it."""

    #: the results of its upstream experiments that this graph run produced, by name
    upstream_results: Mapping[str, Result]
    #: the graph run's lease book for a store root
    book: Callable[[Path], LeaseBook]
    executor: Executor
    #: report an event of the experiment to its plugins and to the caller
    emit: Callable[[Experiment, Event], None]
    #: queue a unit (under the experiment's name); its outcome is sent to the stream
    submit: Callable[[str, UnitJob, MemoryObjectSendStream[UnitOutcome]], None]
    #: delete retired version directories in the background
    discard: Callable[[list[Path]], None]
    #: the graph run's id, stored with every version it writes (a report finds them by it)
    run_id: str = ""
    #: with ``fail_fast``, ends the whole run when a unit fails: (experiment, unit, error)
    stop: Callable[[Experiment, str, str], None] | None = None
    #: the graph run's views of its results, by producer, shared by all their consumers
    views: dict[str, tuple[Result, UpstreamView]] = field(default_factory=dict)
    #: where the run's store work runs (see :mod:`._lane`)
    store_lane: StoreLane = field(default_factory=StoreLane)


class ExperimentRun:
    """Runs (or resumes) one configured experiment for the scheduler."""

    def __init__(self, inputs: NodeInputs, exp: Experiment, root: Path | None = None) -> None:
        """``root``: the experiment's store root, resolved (if the caller has it already)."""
        self.inputs = inputs
        self.exp = exp
        plugin = exp.store_plugin
        self.store = ExperimentStore(
            root or plugin.root_dir.resolve(), exp.name or "experiment", keep=plugin.keep,
            fsync=plugin.fsync,
        )

    # -- upstreams --------------------------------------------------------------------------
    def _upstreams(self) -> dict[str, UpstreamView]:
        """Views of the upstream runs this experiment's units read."""
        views: dict[str, UpstreamView] = {}
        for art in self.exp.consumed_artifacts():
            producer = art.producer or ""
            if producer in views:
                continue
            result = self.inputs.upstream_results.get(producer)
            if result is None:
                result = self._load_external(producer, art.producer_root)
                if result is None:
                    continue  # fetch() will report the missing run with the path
                views[producer] = upstream_view(result)
                continue
            shared = self.inputs.views.get(producer)
            if shared is None or shared[0] is not result:
                # A producer with many consumers (a fan-out) is viewed once, not once each.
                shared = self.inputs.views[producer] = (result, upstream_view(result))
            views[producer] = shared[1]
        return views

    def _load_external(self, producer: str, root: Path | None) -> Result | None:
        """An upstream outside the graph (standalone ``Experiment.run``): its newest run on disk,
        in the producer's own store root (this experiment's when the producer's is unknown)."""
        store = ExperimentStore(self.store.root if root is None else root.resolve(), producer)
        stored = self._claim_newest(store).version
        return None if stored is None else load_stored_result(stored)

    def _claim_newest(self, store: ExperimentStore) -> Scan:
        """The newest usable version, claimed for this run (a pruner may race us: retry)."""
        book = self.inputs.book(store.root)
        for _ in range(3):
            scan = store.scan()
            if scan.version is None or store.claim(book, scan.version):
                return scan
        return Scan(None, scan.notes)

    # -- the run ----------------------------------------------------------------------------
    def _plan(self, fingerprint: dict[str, Any], views: dict[str, UpstreamView]) -> Plan:
        scan = self._claim_newest(self.store) if self.exp.strategy == "resume" else Scan(None)

        def interrupted() -> list[Journal]:
            book = self.inputs.book(self.store.root)
            found = []
            for n in self.store.newer_than(scan.version.number if scan.version else None):
                if self.store.claim_unfinished(book, n):
                    journal = Journal.read(n, self.store.dir / f"v{n}")
                    if journal is not None:
                        found.append(journal)
            return found

        return plan_run(self.exp, strategy=self.exp.strategy, fingerprint=fingerprint,
                        stored=scan.version, interrupted=interrupted, upstreams=views,
                        notes=scan.notes)

    async def execute(self) -> Result:
        exp = self.exp
        views = self._upstreams()
        fingerprint = experiment_fingerprint(exp)
        plan = self._plan(fingerprint, views)
        if exp.strategy != "resume":
            return await self._execute(plan, views, fingerprint)
        if not plan.fully_reused:
            # Someone else may be computing it right now: wait for them, then look again.
            run_lock = await acquire_lock(self.store.run_lock_path, self._waiting)
            try:
                self.store.mark_owner(exp.name or "")
                plan = self._plan(fingerprint, views)
                if not plan.fully_reused:
                    self._decided(plan)
                    return await self._execute(plan, views, fingerprint)
            finally:
                run_lock.release()
        return self._resumed(plan)

    def resume_unchanged(self) -> Result | None:
        """The result of a resume that reuses the newest version whole, decided and loaded with
        no waiting (so without an event loop); None, having announced nothing, if some unit
        must run: :meth:`execute` then decides again, under the run lock."""
        if self.exp.strategy != "resume":
            return None
        plan = self._plan(experiment_fingerprint(self.exp), self._upstreams())
        return self._resumed(plan) if plan.fully_reused else None

    def _waiting(self) -> None:
        self.inputs.emit(self.exp, Event(
            "waiting", self.exp.name or "",
            reason=f"waiting for {self.store.owner()}, which is computing it in "
                   f"{self.store.dir}; this run reuses its result once it is done"))

    def _decided(self, plan: Plan) -> None:
        name = self.exp.name or ""
        self.inputs.emit(self.exp, Event("decision", name, units=plan.units, reason=plan.reason))
        if not plan.uniform:
            for (condition, replicate), why in plan.why.items():
                self.inputs.emit(self.exp, Event("decision", name, condition=condition,
                                                 replicate=replicate, reason=why))

    def _resumed(self, plan: Plan) -> Result:
        self._decided(plan)
        assert plan.source is not None and plan.source.stored is not None
        source = plan.source.stored
        records = {}
        for c in self.exp.conditions:
            records[c] = plan.source.record(c).with_values(source.path)
        result = build_result(
            self.exp, source.number, source.path, records, executed=False, errors={},
            provenance=_provenance(source.metadata), reason=plan.reason,
            reused=list(records), unit_reasons=plan.unit_reasons,
        )
        self.inputs.emit(self.exp, Event("resumed", self.exp.name or "", version=source.number,
                                            reason=plan.reason))
        for plugin in self.exp.plugins:
            plugin.after_run(self.exp, result)
        return result

    def _blob(self) -> bytes | None:
        if not self.inputs.executor.out_of_process or self.exp.pipeline.is_async:
            return None
        try:
            return cloudpickle.dumps(self.exp)
        except Exception:
            raise PicklingError(
                f"experiment {self.exp.name!r} cannot be sent to worker processes: "
                f"{_find_unpicklable(self.exp)}. Define it at module level, or run with "
                "executor='thread' or 'inline'"
            ) from None

    async def _execute(
        self, plan: Plan, views: dict[str, UpstreamView], fingerprint: dict[str, Any],
    ) -> Result:
        exp, inputs = self.exp, self.inputs
        name = exp.name or ""
        blob = self._blob()
        for plugin in exp.plugins:
            plugin.before_run(exp)
        started = time.time()
        seeds = [exp.seed_plugin.replicate_seed(name, r) for r in range(exp.replicates)]
        book = inputs.book(self.store.root)
        if not exp.pipeline.is_async:
            inputs.executor.warm()  # before this run's first thread hop, just below
        # If the run is cancelled or breaks from here on, the version never gets its
        # metadata.json, so nothing treats it as complete; a later prune retires it.
        reused: dict[str, dict[int, UnitRecord]] = {c: {} for c in exp.conditions}

        def open_version() -> VersionWriter:
            # One thread hop for the new version and the units it takes over.
            writer = self.store.allocate(book)
            for (c, r), (source, unit) in plan.reuse.items():
                writer.reuse(source.path, unit)
                # Its values are written again into this version.
                reused[c][r] = dataclasses.replace(unit, metrics={
                    n: load_value(v, source.path) for n, v in unit.metrics.items()})
            return writer

        writer = await inputs.store_lane.run(self.store.root, open_version,
                                             fsync=self.store.fsync)
        inputs.emit(exp, Event("started", name, units=plan.units, version=writer.number,
                              reason=plan.reason))
        cache_dir = str(self.store.root / CACHE_DIR) if any(
            s.cacheable for s in exp.pipeline.steps) else None
        key = uuid.uuid4().hex
        header = {
            "fingerprint": fingerprint,
            "treatments": {c: treatment_fingerprint(exp, c) for c in exp.conditions},
            "upstreams": {p: v.version for p, v in views.items()},
        }
        outcomes = await self._dispatch(plan, seeds, views, writer, header, cache_dir, key, blob)

        records: dict[str, ConditionRecord] = {}
        errors: dict[str, BaseException] = {}
        for cond in exp.conditions:
            mine = outcomes.get(cond, {})
            unread = unread_key_warnings(exp, cond, mine.values())
            for warning in unread:
                inputs.emit(exp, Event("warning", name, condition=cond, reason=warning))
            records[cond] = condition_record(cond, seeds, mine, reused[cond],
                                             plan.warnings(cond), unread)
            errors.update((o.key, o.error) for o in mine.values() if o.error is not None)
        executed_units = [o for per in outcomes.values() for o in per.values()]
        failed = bool(executed_units) and all(o.error is not None for o in executed_units) \
            and not plan.reuse
        failure: tuple[str, BaseException] | None = None
        if failed:
            first = next(iter(errors.values()))
            failure = (f"all {len(executed_units)} unit(s) failed; first error: "
                       f"{type(first).__name__}: {first}", first)
        else:
            recorded = {m for record in records.values() for m in record.metrics()}
            cause = next(filter(None, (h.unrecorded(recorded) for h in exp.hypotheses)), "")
            if cause:
                failure = (cause, HypothesisError(cause))
        finished = time.time()

        metadata = VersionMetadata(
            experiment=name, version=writer.number,
            status="complete" if all(r.state == "complete" for r in records.values())
            else "partial",
            replicates=exp.replicates,
            conditions={c: ConditionMeta(header["treatments"][c],
                                         tuple(sorted(outcomes.get(c, {}))), r)
                        for c, r in records.items()},
            fingerprint=fingerprint,
            upstreams={p: {"version": v.version, "path": v.path} for p, v in views.items()},
            seeds=tuple(seeds), strategy=exp.strategy, reason=plan.reason,
            executor=inputs.executor.name,
            timings={
                "started": started, "finished": finished, "duration": finished - started,
                "unit_cpu": sum(o.cpu for o in executed_units),
                "unit_wall": sum(o.wall for o in executed_units),
            },
            host=host_name(), pid=os.getpid(), run=inputs.run_id,
        )
        reused_conditions = [c for c in exp.conditions if c not in plan.execute]
        result: Result | None = None
        if failure is None:
            # Hypotheses and plugins run before the version is published: if a verifier, a
            # ranker or a plugin fails, nothing is left marked complete for resume to trust.
            try:
                result = build_result(
                    exp, writer.number, writer.path, records, executed=True, errors=errors,
                    provenance=_provenance(metadata), reason=plan.reason,
                    reused=reused_conditions, unit_reasons=plan.unit_reasons,
                )
                for plugin in exp.plugins:
                    plugin.after_run(exp, result)
            except Exception as exc:
                failure = (f"failed after its units ran: {type(exc).__name__}: {exc}", exc)
        if failure is not None:
            metadata = replace(metadata, status="failed")

        def publish() -> Removal:
            # The records, then the marker: only now is the version visible.
            writer.publish(metadata)
            if failure is not None:
                return Removal()
            # This run is done reading the versions it replaces: its claims must not keep them.
            book.release_replaced(self.store.name, writer.number)
            # Older versions may go only once a newer one is published; same thread hop.
            return self.store.prune()

        retired = await inputs.store_lane.run(self.store.root, publish, fsync=self.store.fsync)
        for note in retired.skipped:
            warnings.warn(f"{self.store.dir}: {note}", StoreWarning, stacklevel=1)
        inputs.discard(retired.trash)
        if failure is not None:
            partial = build_result(
                exp, writer.number, writer.path, records, executed=True, errors=errors,
                provenance=_provenance(metadata), reason=plan.reason, reused=reused_conditions,
                failed=True, unit_reasons=plan.unit_reasons,
            )
            raise ExperimentRunFailed(failure[0], partial, failure[1])
        assert result is not None
        inputs.emit(exp, Event("finished", name, version=writer.number,
                               duration=finished - started))
        return result

    async def _dispatch(
        self, plan: Plan, seeds: list[int], views: dict[str, UpstreamView],
        writer: VersionWriter, header: dict[str, Any], cache_dir: str | None, key: str,
        blob: bytes | None,
    ) -> dict[str, dict[int, UnitOutcome]]:
        exp, inputs = self.exp, self.inputs
        name = exp.name or ""
        # Made as they are needed, at most UNIT_WINDOW at a time: a huge replicate count must
        # not hold every unit in memory at once.
        jobs = (
            UnitJob(exp, UnitTask(cond, rep, seeds[rep], str(writer.path), views, cache_dir),
                    blob, key)
            for cond, reps in plan.execute.items() for rep in reps
        )
        total = sum(len(reps) for reps in plan.execute.values())
        outcomes: dict[str, dict[int, UnitOutcome]] = {}
        send, receive = anyio.create_memory_object_stream[UnitOutcome](
            min(total, UNIT_WINDOW) or 1)
        async with send, receive, anyio.create_task_group() as tg:
            async def run_async(job: UnitJob) -> None:
                send.send_nowait(await arun_unit(job.experiment, job.task))

            def feed(count: int) -> None:
                for job in itertools.islice(jobs, count):
                    if exp.pipeline.is_async:
                        tg.start_soon(run_async, job)
                    else:
                        inputs.submit(name, job, send)

            feed(UNIT_WINDOW)
            left = total
            while left:
                # Every outcome already delivered is taken at once: their journal lines go
                # out in one write (200 async units ending together append once, not 200 times).
                batch = [await receive.receive()]
                with contextlib.suppress(anyio.WouldBlock):
                    while len(batch) < left:
                        batch.append(receive.receive_nowait())
                left -= len(batch)
                feed(len(batch))
                # Journaled, finished units survive an interruption of the run; the last ones
                # are published with the version moments later, so they need no journal.
                if left:
                    finished = [(o.condition, unit_record(o, seeds[o.replicate]), o.warnings)
                                for o in batch if o.error is None]
                    if finished:
                        writer.journal(header, finished)
                for outcome in batch:
                    self._finished(outcome, outcomes)
        return outcomes

    def _finished(self, outcome: UnitOutcome,
                  outcomes: dict[str, dict[int, UnitOutcome]]) -> None:
        """Record a unit's outcome and tell the run about it."""
        exp, inputs = self.exp, self.inputs
        name = exp.name or ""
        outcomes.setdefault(outcome.condition, {})[outcome.replicate] = outcome
        for worker in outcome.lost_workers:
            inputs.emit(exp, Event("worker_lost", name, condition=outcome.condition,
                                  replicate=outcome.replicate, worker=worker))
        error = None
        if outcome.error is not None:
            error = f"{type(outcome.error).__name__}: {outcome.error}"
            if isinstance(outcome.error, UnitError):
                error = str(outcome.error)
        inputs.emit(exp, Event(
            "unit_finished", name, condition=outcome.condition,
            replicate=outcome.replicate, duration=outcome.wall, error=error,
            steps=tuple(outcome.steps), attempts=outcome.attempts,
        ))
        if error is not None and inputs.stop is not None:
            inputs.stop(exp, f"{outcome.condition} rep {outcome.replicate}", error)
        for warning in outcome.warnings:
            inputs.emit(exp, Event("warning", name, condition=outcome.condition,
                                   replicate=outcome.replicate, reason=warning))


def _provenance(metadata: VersionMetadata) -> dict[str, Any]:
    return {
        "version": metadata.version,
        "fingerprint": dict(metadata.fingerprint),
        "seeds": list(metadata.seeds),
        "upstreams": {p: dict(u) for p, u in metadata.upstreams.items()},
        "timings": dict(metadata.timings),
        "strategy": metadata.strategy,
        "executor": metadata.executor,
    }


def load_stored_result(stored: StoredVersion) -> Result | None:
    """A minimal Result for an upstream read from disk (artifacts and hashes, no values)."""
    records = {cond: stored.condition_record(cond) for cond in stored.metadata.conditions}
    if BASELINE not in records:
        return None
    result = Result(
        experiment=stored.metadata.experiment, metrics=ExperimentMetrics(),
        provenance=_provenance(stored.metadata), executed=False, version=stored.number,
        version_dir=stored.path, replicates=stored.metadata.replicates,
    )
    result.records = records
    return result
