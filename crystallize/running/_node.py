"""One experiment's run inside a graph run: plan, dispatch its units, aggregate, publish."""

from __future__ import annotations

import itertools
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import cloudpickle
from filelock import FileLock, Timeout

from ..errors import PicklingError, UnitError
from ..model import BASELINE, ConditionMetrics, Event, ExperimentMetrics, Result
from ..store import ExperimentStore, LeaseBook, StoredVersion, unusable_lock
from ._executors import UnitJob
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

    def __init__(self, cause: str, result: Result) -> None:
        super().__init__(cause)
        self.cause = cause
        self.result = result


async def acquire_lock(path: Path) -> FileLock:
    """Take a file lock without blocking the event loop (polls; cancellable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0)
    delay = 0.005
    while True:
        try:
            lock.acquire()
            return lock
        except Timeout:
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


def condition_record(
    condition: str, replicates: int, seeds: list[int], outcomes: dict[int, UnitOutcome],
    reused: dict[str, Any] | None,
) -> dict[str, Any]:
    """A condition's ``results.json``: reused replicates from ``reused``, the rest from outcomes."""
    kept = int(reused.get("replicates", 0)) if reused else 0
    kept = min(kept, replicates)
    names: list[str] = []
    for src in ([reused["metrics"]] if reused else []) + [o.metrics for o in outcomes.values()]:
        names += [n for n in src if n not in names]
    artifact_names: list[str] = []
    for src in ([reused["artifacts"]] if reused else []) + [o.artifacts for o in outcomes.values()]:
        artifact_names += [n for n in src if n not in artifact_names]

    metrics = {n: [(reused["metrics"].get(n, [None] * kept)[r] if reused and r < kept else
                    (outcomes[r].metrics.get(n) if r in outcomes else None))
                   for r in range(replicates)] for n in names}
    artifacts = {n: [(reused["artifacts"].get(n, [None] * kept)[r] if reused and r < kept else
                      (outcomes[r].artifacts.get(n) if r in outcomes else None))
                     for r in range(replicates)] for n in artifact_names}
    errors = {str(r): f"{type(o.error).__name__}: {o.error}" for r, o in outcomes.items() if
              o.error is not None}
    return {
        "condition": condition,
        "replicates": replicates,
        "metrics": metrics,
        "artifacts": artifacts,
        "errors": errors,
        "seeds": seeds,
    }


def build_result(
    exp: Experiment, version: int | None, version_dir: Path, records: dict[str, dict[str, Any]],
    *, executed: bool, errors: dict[str, BaseException], provenance: dict[str, Any],
    reason: str | None, reused: list[str], failed: bool = False,
) -> Result:
    """The :class:`Result` for ``records`` — the same code whether executed or resumed."""
    metrics = ExperimentMetrics()
    for cond in exp.conditions:
        record = records.get(cond)
        stored = (record or {}).get("metrics", {})
        values = {n: list(v[: exp.replicates]) for n, v in stored.items()}
        if cond == BASELINE:
            metrics.baseline = ConditionMetrics(values)
        else:
            metrics.treatments[cond] = ConditionMetrics(values)
    if exp.hypotheses and not failed:
        def clean(m: dict[str, list[Any]]) -> dict[str, list[Any]]:
            return {k: [x for x in v if x is not None] for k, v in m.items()}

        base = clean(metrics.baseline.metrics)
        treat = {t: clean(c.metrics) for t, c in metrics.treatments.items()}
        metrics.hypotheses = [h.evaluate(base, treat) for h in exp.hypotheses]
    artifacts: dict[str, dict[str, list[Path | None]]] = {}
    for cond, record in records.items():
        for name, rels in record.get("artifacts", {}).items():
            artifacts.setdefault(name, {})[cond] = [
                None if r is None else version_dir / r for r in rels[: exp.replicates]
            ]
    result = Result(
        experiment=exp.name or "", metrics=metrics, errors=errors, artifacts=artifacts,
        provenance=provenance, executed=executed, version=version, version_dir=version_dir,
        reason=reason, replicates=exp.replicates, reused=reused, failed=failed,
    )
    result.records = records
    return result


def upstream_view(result: Result) -> UpstreamView:
    """What a consumer's units need from an upstream result."""
    records = result.records
    return UpstreamView(
        experiment=result.experiment,
        version=result.version or 0,
        path=str(result.version_dir),
        replicates=result.replicates,
        artifacts={c: {n: list(v[: result.replicates]) for n, v in r.get("artifacts", {}).items()}
                   for c, r in records.items()},
    )


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


class ExperimentRun:
    """Runs (or resumes) one configured experiment for the scheduler."""

    def __init__(self, inputs: NodeInputs, exp: Experiment) -> None:
        self.inputs = inputs
        self.exp = exp
        plugin = exp.store_plugin
        self.store = ExperimentStore(
            plugin.root_dir.resolve(), exp.name or "experiment", keep=plugin.keep,
            fsync=plugin.fsync,
        )

    # -- upstreams --------------------------------------------------------------------------
    def _upstreams(self) -> tuple[dict[str, UpstreamView], dict[str, dict[str, str]]]:
        """Views of consumed upstream runs, and per condition the upstream origins it reads."""
        views: dict[str, UpstreamView] = {}
        origins: dict[str, dict[str, str]] = {}
        for art in self.exp.consumed_artifacts():
            producer = art.producer or ""
            if producer in views:
                continue
            result = self.inputs.upstream_results.get(producer)
            if result is None:
                result = self._load_external(producer)
                if result is None:
                    continue  # fetch() will report the missing run with the path
            views[producer] = upstream_view(result)
            origins_of: dict[str, str] = result.provenance.get("origins", {})
            for cond in self.exp.conditions:
                read = cond if cond in origins_of else BASELINE
                origins.setdefault(cond, {})[producer] = origins_of.get(read, "missing")
        return views, origins

    def _load_external(self, producer: str) -> Result | None:
        """An upstream outside the graph (standalone ``Experiment.run``): its newest run on disk."""
        store = ExperimentStore(self.store.root, producer)
        stored = self._claim_newest(store)
        return None if stored is None else load_stored_result(stored)

    def _claim_newest(self, store: ExperimentStore) -> StoredVersion | None:
        """The newest complete version, claimed for this run (a pruner may race us: retry)."""
        book = self.inputs.book(store.root)
        for _ in range(3):
            stored = store.newest_complete()
            if stored is None or store.claim(book, stored):
                return stored
        return None

    # -- the run ----------------------------------------------------------------------------
    def _plan(self, fingerprint: dict[str, Any], origins: dict[str, dict[str, str]]) -> Plan:
        stored = self._claim_newest(self.store) if self.exp.strategy == "resume" else None
        return plan_run(self.exp, strategy=self.exp.strategy, stored=stored,
                        fingerprint=fingerprint, upstream_origins=origins)

    async def execute(self) -> Result:
        exp = self.exp
        views, origins = self._upstreams()
        fingerprint = experiment_fingerprint(exp)
        plan = self._plan(fingerprint, origins)
        if exp.strategy != "resume":
            return await self._execute(plan, views, origins, fingerprint)
        if not plan.fully_reused:
            # Someone else may be computing it right now: wait for them, then look again.
            run_lock = await acquire_lock(self.store.run_lock_path)
            try:
                plan = self._plan(fingerprint, origins)
                if not plan.fully_reused:
                    self._decided(plan)
                    return await self._execute(plan, views, origins, fingerprint)
            finally:
                run_lock.release()
        self._decided(plan)
        return self._resumed(plan)

    def _decided(self, plan: Plan) -> None:
        self.inputs.emit(self.exp, Event("decision", self.exp.name or "", reason=plan.reason))

    def _resumed(self, plan: Plan) -> Result:
        assert plan.source is not None
        source = plan.source
        result = build_result(
            self.exp, source.number, source.path, plan.reuse, executed=False, errors={},
            provenance=_provenance(source.metadata), reason=plan.reason,
            reused=list(plan.reuse),
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
        self, plan: Plan, views: dict[str, UpstreamView], origins: dict[str, dict[str, str]],
        fingerprint: dict[str, Any],
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
        # File-system work runs in threads: on slow disks it is most of a tiny node's cost, and
        # other experiments' units and writes can proceed meanwhile. If the run is cancelled or
        # breaks from here on, the version never gets its metadata.json, so nothing treats it
        # as complete; a later prune retires it.
        writer = await anyio.to_thread.run_sync(self.store.allocate, book)
        if plan.reuse:
            assert plan.source is not None
            source = plan.source
            def reuse() -> None:
                for condition, replicates in plan.reuse.items():
                    writer.reuse(source, condition, replicates)

            await anyio.to_thread.run_sync(reuse)
        inputs.emit(exp, Event("started", name, units=plan.units, version=writer.number,
                              reason=plan.reason))
        cache_dir = str(self.store.root / ".crystallize_cache") if any(
            s.cacheable for s in exp.pipeline.steps) else None
        key = uuid.uuid4().hex
        outcomes = await self._dispatch(plan, seeds, views, writer.path, cache_dir, key, blob)

        records: dict[str, dict[str, Any]] = {}
        complete: dict[str, bool] = {}
        errors: dict[str, BaseException] = {}
        conditions_meta: dict[str, Any] = {}
        stored_conditions = plan.source.metadata.get("conditions", {}) if plan.source else {}
        for cond in exp.conditions:
            mine = outcomes.get(cond, {})
            record = condition_record(cond, exp.replicates, seeds, mine, plan.reuse.get(cond))
            records[cond] = record
            for o in mine.values():
                if o.error is not None:
                    errors[o.key] = o.error
            complete[cond] = not record["errors"] and all(
                r in mine or cond in plan.reuse for r in range(exp.replicates))
            origin = (stored_conditions.get(cond, {}).get("origin") if not mine
                      else uuid.uuid4().hex)
            conditions_meta[cond] = {
                "treatment": treatment_fingerprint(exp, cond),
                "origin": origin or uuid.uuid4().hex,
                "upstreams": origins.get(cond, {}),
                "complete": complete[cond],
                "executed_replicates": sorted(mine),
            }
        executed_units = [o for per in outcomes.values() for o in per.values()]
        failed = bool(executed_units) and all(o.error is not None for o in executed_units) \
            and not plan.reuse
        if failed:
            first = next(iter(errors.values()))
            cause = (f"all {len(executed_units)} unit(s) failed; first error: "
                     f"{type(first).__name__}: {first}")
        else:
            recorded = {m for record in records.values() for m in record["metrics"]}
            cause = next(filter(None, (h.unrecorded(recorded) for h in exp.hypotheses)), "")
            failed = bool(cause)
        finished = time.time()
        metadata = {
            "experiment": name,
            "version": writer.number,
            "status": "failed" if failed else "complete",
            "replicates": exp.replicates,
            "conditions": conditions_meta,
            "fingerprint": fingerprint,
            "upstreams": {p: {"version": v.version, "path": v.path} for p, v in views.items()},
            "seeds": seeds,
            "strategy": exp.strategy,
            "reason": plan.reason,
            "executor": inputs.executor.name,
            "timings": {
                "started": started, "finished": finished, "duration": finished - started,
                "unit_cpu": sum(o.cpu for o in executed_units),
                "unit_wall": sum(o.wall for o in executed_units),
            },
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

        def write() -> tuple[StoredVersion, list[Path]]:
            for cond, record in records.items():
                writer.finish_condition(cond, record, complete=complete[cond])
            stored = writer.publish(metadata)  # last: only now is the version visible
            # Older versions may go only once a newer one is complete; same thread hop.
            return stored, ([] if failed else self.store.prune())

        stored, retired = await anyio.to_thread.run_sync(write)
        result = build_result(
            exp, writer.number, writer.path, records, executed=True, errors=errors,
            provenance=_provenance(stored.metadata), reason=plan.reason,
            reused=[c for c in plan.reuse if c not in outcomes], failed=failed,
        )
        if failed:
            raise ExperimentRunFailed(cause, result)
        inputs.discard(retired)
        inputs.emit(exp, Event("finished", name, version=writer.number,
                               duration=finished - started))
        for plugin in exp.plugins:
            plugin.after_run(exp, result)
        return result

    async def _dispatch(
        self, plan: Plan, seeds: list[int], views: dict[str, UpstreamView], version_path: Path,
        cache_dir: str | None, key: str, blob: bytes | None,
    ) -> dict[str, dict[int, UnitOutcome]]:
        exp, inputs = self.exp, self.inputs
        name = exp.name or ""
        # Made as they are needed, at most UNIT_WINDOW at a time: a huge replicate count must
        # not hold every unit in memory at once.
        jobs = (
            UnitJob(exp, UnitTask(cond, rep, seeds[rep], str(version_path), views, cache_dir),
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
            for _ in range(total):
                outcome = await receive.receive()
                feed(1)
                outcomes.setdefault(outcome.condition, {})[outcome.replicate] = outcome
                error = None
                if outcome.error is not None:
                    error = f"{type(outcome.error).__name__}: {outcome.error}"
                    if isinstance(outcome.error, UnitError):
                        error = str(outcome.error)
                inputs.emit(exp, Event(
                    "unit_finished", name, condition=outcome.condition,
                    replicate=outcome.replicate, duration=outcome.wall, error=error,
                    steps=tuple(outcome.steps),
                ))
        return outcomes


def _provenance(metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": metadata.get("version"),
        "fingerprint": metadata.get("fingerprint"),
        "seeds": metadata.get("seeds"),
        "upstreams": metadata.get("upstreams"),
        "timings": metadata.get("timings"),
        "strategy": metadata.get("strategy"),
        "executor": metadata.get("executor"),
        "origins": {c: i.get("origin") for c, i in metadata.get("conditions", {}).items()},
    }


def load_stored_result(stored: StoredVersion) -> Result | None:
    """A minimal Result for an upstream read from disk (metrics, artifacts, origins)."""
    records = {}
    for cond in stored.metadata.get("conditions", {}):
        record = stored.condition_results(cond)
        if record is not None:
            records[cond] = record
    if BASELINE not in records:
        return None
    replicates = int(stored.metadata.get("replicates", 1))
    result = Result(
        experiment=stored.metadata.get("experiment", ""), metrics=ExperimentMetrics(),
        provenance=_provenance(stored.metadata), executed=False, version=stored.number,
        version_dir=stored.path, replicates=replicates,
    )
    result.records = records
    return result
