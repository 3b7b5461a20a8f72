"""The single-experiment API (SPEC §2) on real executors, and the store layout (§4)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

from crystallize import (
    Artifact,
    ArtifactPlugin,
    ContextMutationError,
    Experiment,
    ExperimentFailedError,
    ExperimentGraph,
    ExperimentInput,
    FrozenContext,
    Pipeline,
    SeedPlugin,
    Treatment,
    data_source,
    hypothesis,
    pipeline_step,
    treatment,
    verifier,
)
from crystallize.running import ReproducibilityWarning


@data_source
def numbers(ctx, n=5):
    return list(range(n))


@pipeline_step()
def scale(data, ctx, factor=1):
    return [x * factor for x in data]


@pipeline_step
def total(data, ctx):
    return data, {"total": sum(data)}


@pipeline_step()
def noisy(data, ctx):
    # a seeded per-unit RNG gives identical draws on every executor, threads included
    rng = random.Random(ctx["seed"])
    ctx.record("draw", rng.random())
    ctx.record("global_draw", random.random())
    return data


def make(name="exp", **kw):
    kw.setdefault("replicates", 3)
    return Experiment(numbers(), [scale(), total()], name=name, **kw)


# -- context --------------------------------------------------------------------------------
def test_frozen_context_adds_but_never_overwrites():
    ctx = FrozenContext({"a": 1})
    ctx["b"] = 2
    ctx.add("c", 3)
    assert ctx.as_dict() == {"a": 1, "b": 2, "c": 3}
    with pytest.raises(ContextMutationError, match="'a' is already set"):
        ctx["a"] = 5
    with pytest.raises(KeyError):  # ContextMutationError is a KeyError
        ctx.add("b", 0)
    assert ctx["a"] == 1
    with pytest.raises(KeyError, match="no key 'zzz'"):
        ctx["zzz"]


def test_reserved_context_keys_are_the_units_own():
    for bad in ({"seed": 1}, {"replicate": 0}, {"condition": "x"}):
        key = next(iter(bad))
        with pytest.raises(ValueError, match=f"treatment 't'.*{key!r} is reserved.*SeedPlugin"):
            Treatment("t", bad)
        with pytest.raises(ValueError, match=f"initial_ctx.*{key!r} is reserved"):
            Experiment(numbers(), [total()], name="r", initial_ctx=bad)

    def sneaky(ctx):
        ctx["seed"] = 7  # a callable treatment cannot replace it either

    result = Experiment(numbers(), [total()], name="r", treatments=[Treatment("s", sneaky)]).run(
        executor="inline")
    assert set(result.errors) == {"s_rep_0"}
    assert "'seed' is reserved" in str(result.errors["s_rep_0"])
    assert result.metrics.baseline.metrics["total"] == [10]


# -- steps ----------------------------------------------------------------------------------
def test_step_factory_params_and_context_injection():
    step = scale(factor=3)
    assert step.name == "ScaleStep"
    ctx = FrozenContext({"factor": 10})
    assert step.fn(*step.leading_args([1], ctx), **step.resolve(ctx)) == [3]
    injected = scale()
    assert injected.resolve(ctx) == {"factor": 10}  # not passed -> read from context
    assert injected.resolve(FrozenContext()) == {"factor": 1}  # then the default


def test_step_factory_rejects_unknown_parameter():
    with pytest.raises(TypeError, match="unexpected parameter.*'fator'"):
        scale(fator=2)


def test_metrics_from_return_and_record_in_replicate_order():
    @pipeline_step()
    def rep_metric(data, ctx):
        ctx.record("rep", ctx["replicate"])
        return data

    result = Experiment(numbers(), [total(), rep_metric()], name="m", replicates=4).run(
        executor="inline")
    assert result.metrics.baseline.metrics["total"] == [10, 10, 10, 10]
    assert result.metrics.baseline.metrics["rep"] == [0, 1, 2, 3]
    assert result.executed and not result.resumed
    assert repr(result) == ("<Result 'm': executed -> v0, 4 replicate(s), conditions "
                            "['baseline'], metrics ['rep', 'total'], 0 error(s)>")


# -- treatments -----------------------------------------------------------------------------
def test_treatments_mapping_callable_and_baseline_override():
    def triple(ctx):
        ctx["factor"] = 3

    exp = make(
        treatments=[Treatment("double", {"factor": 2}), treatment("triple", triple)],
        initial_ctx={"factor": 1},
    )
    result = exp.run(executor="inline")
    assert result.metrics.baseline.metrics["total"] == [10] * 3
    assert result.metrics.treatments["double"].metrics["total"] == [20] * 3
    assert result.metrics.treatments["triple"].metrics["total"] == [30] * 3

    modified = make(name="b", treatments=[Treatment("baseline", {"factor": 5})])
    res = modified.run(executor="inline")
    assert res.metrics.baseline.metrics["total"] == [50] * 3
    assert res.metrics.treatments == {}


# -- executors and seeds --------------------------------------------------------------------
def test_process_thread_inline_give_identical_seeded_metrics():
    exp = Experiment(numbers(), [noisy(), total()], name="seeded", replicates=4,
                     treatments=[Treatment("t", {})])
    runs = {ex: exp.run(executor=ex, max_workers=2) for ex in ("process", "inline")}
    # threads share the module-level RNG, and the run says so before it starts
    with pytest.warns(ReproducibilityWarning, match="global random generator"):
        runs["thread"] = exp.run(executor="thread", max_workers=2)
    draws = {ex: r.metrics.baseline.metrics["draw"] for ex, r in runs.items()}
    assert draws["process"] == draws["thread"] == draws["inline"]
    assert len(set(draws["inline"])) == 4  # each replicate has its own seed
    # the module-level RNG is seeded per unit too (process and inline do not share it)
    assert (runs["process"].metrics.baseline.metrics["global_draw"]
            == runs["inline"].metrics.baseline.metrics["global_draw"])
    # conditions of one replicate share its seed (common random numbers)
    assert runs["inline"].metrics.treatments["t"].metrics["draw"] == draws["inline"]
    # and a second run reproduces the first
    assert exp.run(executor="inline").metrics.baseline.metrics["draw"] == draws["inline"]


def test_seed_plugin_master_seed_changes_draws():
    base = Experiment(numbers(), [noisy()], name="s", replicates=2)
    other = Experiment(numbers(), [noisy()], name="s", replicates=2,
                       plugins=[SeedPlugin(seed=1234)])
    a = base.run(executor="inline").metrics.baseline.metrics["draw"]
    b = other.run(executor="inline").metrics.baseline.metrics["draw"]
    assert a != b
    assert other.run(executor="inline").metrics.baseline.metrics["draw"] == b


def test_process_executor_runs_closures_and_lambdas():
    offset = 7
    add_offset = pipeline_step()(lambda data, ctx: [x + offset for x in data])

    @pipeline_step()
    def closure_step(data, ctx):
        return data, {"sum": sum(data)}

    result = Experiment(numbers(), [add_offset(), closure_step()], name="cl", replicates=2).run(
        executor="process", max_workers=2)
    assert result.errors == {}
    assert result.metrics.baseline.metrics["sum"] == [45, 45]


def test_async_steps_overlap_on_the_event_loop():
    @pipeline_step()
    async def wait(data, ctx):
        start = time.perf_counter()
        await anyio.sleep(0.2)
        return data, {"start": start, "end": time.perf_counter()}

    result = Experiment(numbers(), [wait()], name="async", replicates=8).run()
    starts = result.metrics.baseline.metrics["start"]
    ends = result.metrics.baseline.metrics["end"]
    # every replicate started before any finished: they ran concurrently, not one after another
    assert max(starts) < min(ends)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_inside_event_loop_points_to_arun(backend):
    exp = make()

    async def main():
        with pytest.raises(RuntimeError, match=f"inside a running {backend} event loop.*arun"):
            exp.run()
        return await exp.arun(executor="inline")

    assert anyio.run(main, backend=backend).metrics.baseline.metrics["total"] == [10] * 3


def test_arun_works_under_trio():
    graph = ExperimentGraph(make("a"), make("b"))
    results = anyio.run(lambda: graph.arun(executor="thread"), backend="trio")
    assert set(results) == {"a", "b"}
    assert results["a"].metrics.baseline.metrics["total"] == [10] * 3


# -- errors ---------------------------------------------------------------------------------
def test_unit_errors_recorded_by_condition_and_replicate():
    @pipeline_step()
    def flaky(data, ctx):
        if ctx["replicate"] == 1:
            raise ValueError("boom on one")
        return data, {"ok": 1}

    result = Experiment(numbers(), [flaky()], name="flaky", replicates=3,
                        treatments=[Treatment("t", {})]).run(executor="process", max_workers=2)
    assert set(result.errors) == {"baseline_rep_1", "t_rep_1"}
    assert isinstance(result.errors["baseline_rep_1"], ValueError)
    assert "boom on one" in str(result.errors["baseline_rep_1"])
    assert result.metrics.baseline.metrics["ok"] == [1, 1]  # the failed replicate adds nothing
    assert result.metrics.baseline.by_replicate == {0: {"ok": 1}, 1: {}, 2: {"ok": 1}}


FORK_WATCH = """
import json, os, threading
from crystallize import Artifact, Experiment, ExperimentGraph, data_source, pipeline_step

threads_at_fork = []
os.register_at_fork(before=lambda: threads_at_fork.append(len(threading.enumerate())))

@data_source
def src(ctx):
    return [1, 2]

out = Artifact("a.txt")

@pipeline_step()
def write(data, ctx, a: Artifact):
    a.write("x")
    return data

prod = Experiment(src(), [write(a=out)], name="p", replicates=4, outputs=[out])
cons = Experiment(out, [pipeline_step()(lambda data, ctx: data)()], name="c", replicates=4)
ExperimentGraph(prod, cons).run(executor="process", max_workers=2)
print(json.dumps(threads_at_fork))
ExperimentGraph(prod, cons).run(executor="process", max_workers=2, strategy="resume")
print(json.dumps(threads_at_fork))
"""


def test_workers_fork_before_the_run_starts_threads_and_only_when_needed(tmp_path):
    # Forking while another thread holds a lock can deadlock the child (Python 3.12 warns).
    script = tmp_path / "forks.py"
    script.write_text(FORK_WATCH)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first, after_resume = (json.loads(line) for line in done.stdout.splitlines()[-2:])
    assert first == [1, 1]  # two workers, each forked while the main thread was alone
    assert after_resume == first  # a run that reuses everything forks nothing


def test_a_custom_executor_implements_the_batch_round_trip():
    from crystallize import Executor
    from crystallize.running import run_unit

    class Nowhere(Executor):
        name = "nowhere"

    with pytest.raises(TypeError, match=r"abstract.*run_batch"):
        Nowhere()

    class Here(Executor):
        name = "here"

        async def run_batch(self, jobs):
            return [run_unit(job.experiment, job.task) for job in jobs]

    result = make("custom").run(executor=Here(max_workers=1))
    assert result.metrics.baseline.metrics["total"] == [10, 10, 10]


def test_a_metric_that_cannot_leave_the_worker_is_named():
    @pipeline_step()
    def locked(data, ctx):
        return data, {"fine": 1, "guard": threading.Lock()}

    exp = Experiment(numbers(), [locked()], name="locked", replicates=2)
    with pytest.raises(ExperimentFailedError) as failed:  # every unit failed
        exp.run(executor="process", max_workers=2)
    result = failed.value.results["locked"]
    assert set(result.errors) == {"baseline_rep_0", "baseline_rep_1"}
    message = str(result.errors["baseline_rep_0"])
    # refused where it is recorded, naming the metric (it could not be stored either)
    assert "'guard'" in message and "cannot be stored" in message


def test_a_worker_process_that_dies_fails_only_its_unit():
    @pipeline_step()
    def fragile(data, ctx):
        if ctx["replicate"] == 0:
            os._exit(3)  # a segfault or the OOM killer, as the pool sees it
        return data, {"ok": 1}

    result = Experiment(numbers(), [fragile()], name="fragile", replicates=4).run(
        executor="process", max_workers=2)
    assert "baseline_rep_0" in result.errors
    assert "worker process died" in str(result.errors["baseline_rep_0"])
    # the units that shared the pool with it are retried and finish
    assert set(result.errors) == {"baseline_rep_0"}
    assert result.metrics.baseline.metrics["ok"] == [1, 1, 1]
    assert result.metrics.baseline.by_replicate[0] == {}


def test_unpicklable_step_names_experiment_step_and_object():
    lock = threading.Lock()

    @pipeline_step()
    def uses_lock(data, ctx, guard=None):
        return data

    exp = Experiment(numbers(), [uses_lock(guard=lock)], name="pickly")
    with pytest.raises(ExperimentFailedError) as info:
        exp.run(executor="process")
    message = str(info.value)
    assert "pickly" in message and "Uses_LockStep" in message and "guard" in message
    assert "lock" in message.lower()
    # the thread executor needs no pickling and runs it fine
    assert exp.run(executor="thread").errors == {}


def test_all_units_failing_fails_the_experiment():
    @pipeline_step()
    def broken(data, ctx):
        raise RuntimeError("always")

    with pytest.raises(ExperimentFailedError, match="broken.*all 2 unit"):
        Experiment(numbers(), [broken()], name="broken", replicates=2).run(executor="inline")


# -- artifacts and the store ----------------------------------------------------------------
summary = Artifact("summary.json", loader=lambda p: json.loads(p.read_text()),
                   writer=lambda obj: json.dumps(obj))


@pipeline_step()
def write_summary(data, ctx, summary: Artifact):
    summary.write({"total": sum(data), "replicate": ctx["replicate"],
                   "condition": ctx["condition"]})
    return data


def producer(replicates=2, **kw):
    out = Artifact("summary.json", loader=lambda p: json.loads(p.read_text()),
                   writer=lambda obj: json.dumps(obj))
    exp = Experiment(numbers(), [write_summary(summary=out)], name="producer",
                     replicates=replicates, outputs=[out], **kw)
    return exp, out


def test_store_layout_on_disk():
    exp, _ = producer(treatments=[Treatment("double", {"n": 10})])
    result = exp.run(executor="process", max_workers=2)
    v = Path("data/producer/v0")
    assert result.version == 0 and result.version_dir == v.resolve()
    meta = json.loads((v / "metadata.json").read_text())
    assert meta["status"] == "complete" and meta["replicates"] == 2
    assert set(meta["conditions"]) == {"baseline", "double"}
    assert "fingerprint" in meta and "seeds" in meta and "timings" in meta
    assert (v / ".crystallize_complete").exists()
    for cond in ("baseline", "double"):
        assert meta["conditions"][cond]["replicates"] == 2
        for r in range(2):
            f = v / f"{cond}~r{r}~Write_SummaryStep~summary.json"
            assert json.loads(f.read_text())["replicate"] == r
    assert result.artifacts["summary.json"]["double"][1] == (
        v / "double~r1~Write_SummaryStep~summary.json").resolve()
    # every file directly in the version: no folder per replicate, condition or step
    assert all(p.is_file() for p in v.iterdir())


def test_default_writer_and_loader_bytes_and_str():
    raw = Artifact("raw.txt")

    @pipeline_step()
    def dump(data, ctx, raw: Artifact):
        raw.write("text" if ctx["replicate"] == 0 else b"bytes")
        return data

    @pipeline_step()
    def bad(data, ctx, raw: Artifact):
        raw.write({"not": "bytes"})
        return data

    exp = Experiment(numbers(), [dump()], name="raw", replicates=2, outputs=[raw])
    result = exp.run(executor="inline")
    assert result.artifact_path("raw.txt", replicate=0).read_bytes() == b"text"
    assert raw.load(result.artifact_path("raw.txt", replicate=1)) == b"bytes"
    raw2 = Artifact("raw.txt")
    with pytest.raises(ExperimentFailedError, match="default writer accepts bytes or str"):
        Experiment(numbers(), [bad(raw=raw2)], name="bad", outputs=[raw2]).run(executor="inline")


def test_artifact_param_without_matching_output_is_rejected():
    with pytest.raises(ValueError, match="parameter 'summary' is annotated Artifact"):
        Experiment(numbers(), [write_summary()], name="x")


def test_consumer_cycles_replicates_and_falls_back_to_baseline():
    prod, out = producer(replicates=2)

    @pipeline_step()
    def read(data, ctx):
        return data, {"upstream_rep": data["replicate"], "upstream_cond": data["condition"]}

    consumer = Experiment(out, [read()], name="consumer", replicates=5,
                          treatments=[Treatment("new", {})])
    results = ExperimentGraph(prod, consumer).run(executor="process", max_workers=2,
                                                  strategy="rerun")
    cons = results["consumer"].metrics
    assert cons.baseline.metrics["upstream_rep"] == [0, 1, 0, 1, 0]
    # the producer never ran the consumer's treatment "new": it reads the producer's baseline
    assert cons.treatments["new"].metrics["upstream_cond"] == ["baseline"] * 5


def test_experiment_input_bundles_sources_by_alias():
    prod, out = producer(replicates=2)

    @pipeline_step()
    def combine(data, ctx):
        return data, {"n": len(data["nums"]), "rep": data["summary"]["replicate"]}

    consumer = Experiment(ExperimentInput(summary=out, nums=numbers(n=3)), [combine()],
                          name="bundle", replicates=2)
    res = ExperimentGraph(prod, consumer).run(executor="thread")["bundle"]
    assert res.metrics.baseline.metrics == {"n": [3, 3], "rep": [0, 1]}


def test_versioned_store_and_retention():
    out = Artifact("o.txt")

    @pipeline_step()
    def w(data, ctx, o: Artifact):
        o.write("x")
        return data

    plugin = ArtifactPlugin(root_dir="store", versioned=True, artifact_retention=2)
    exp = Experiment(numbers(), [w(o=out)], name="ver", outputs=[out], plugins=[plugin])
    versions = [exp.run(executor="inline").version for _ in range(4)]
    assert versions == [0, 1, 2, 3]
    assert sorted(p.name for p in Path("store/ver").glob("v*")) == ["v2", "v3"]

    single = Experiment(numbers(), [total()], name="single",
                        plugins=[ArtifactPlugin(root_dir="store")])
    for _ in range(3):
        single.run(executor="inline")
    assert sorted(p.name for p in Path("store/single").glob("v*")) == ["v2"]


# -- hypotheses -----------------------------------------------------------------------------
@verifier
def mean_diff(baseline, treatment, metric="total"):
    b, t = baseline[metric], treatment[metric]
    return {"diff": sum(t) / len(t) - sum(b) / len(b)}


def test_hypothesis_results_and_ranking():
    @hypothesis(verifier=mean_diff(), metrics="total")
    def biggest(result):
        return -result["diff"]

    exp = make(treatments=[Treatment("x2", {"factor": 2}), Treatment("x3", {"factor": 3})],
               hypotheses=[biggest], initial_ctx={"factor": 1})
    res = exp.run(executor="inline")
    h = res.get_hypothesis("biggest")
    assert h.results["x2"]["diff"] == 10 and h.results["x3"]["diff"] == 20
    assert h.ranking == ["x3", "x2"]
    assert res.get_hypothesis("nope") is None


def test_pipeline_object_and_plugin_hooks_order():
    from crystallize import BasePlugin

    calls = []

    class Recorder(BasePlugin):
        def before_run(self, experiment):
            calls.append("before_run")

        def before_step(self, experiment, step):
            calls.append(f"before:{step.name}")

        def after_step(self, experiment, step, data, ctx):
            calls.append(f"after:{step.name}")

        def after_run(self, experiment, result):
            calls.append("after_run")

    Experiment(numbers(), Pipeline([scale(), total()]), name="hooks",
               plugins=[Recorder()]).run(executor="inline")
    assert calls == ["before_run", "before:ScaleStep", "after:ScaleStep", "before:TotalStep",
                     "after:TotalStep", "after_run"]


def test_artifact_parameter_is_never_taken_for_the_context():
    out = Artifact("o.txt")

    @pipeline_step()
    def no_ctx(data, o: Artifact):
        o.write("written")
        return data

    res = Experiment(numbers(), [no_ctx()], name="noctx", outputs=[out]).run(executor="inline")
    assert res.artifact_path("o.txt").read_text() == "written"
