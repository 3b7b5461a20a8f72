"""No silent wrong answer (SPEC §8): every way a run could return a wrong number quietly."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from test_core import numbers, scale, total

import crystallize
from crystallize import (
    Artifact,
    ArtifactPlugin,
    Experiment,
    ExperimentFailedError,
    ExperimentGraph,
    GraphError,
    LoggingPlugin,
    Treatment,
    hypothesis,
    pipeline_step,
    verifier,
)
from crystallize.errors import (
    HypothesisError,
    RemoteTraceback,
    UnreadTreatmentKeyError,
    UpstreamFailedError,
    unit_traceback,
)
from crystallize.running import ReproducibilityWarning

REPO = Path(crystallize.__file__).resolve().parents[1]


@pipeline_step()
def publish(data, ctx, summary: Artifact, fail=False):
    if fail:
        raise RuntimeError(f"cannot publish {ctx['condition']}")
    summary.write(json.dumps({"total": sum(data), "condition": ctx["condition"]}))
    return data


@pipeline_step()
def read(data, ctx):
    return data, {"upstream": data["total"], "upstream_condition": data["condition"]}


def producer_and_consumer(root="data", consumer_treatments=()):
    out = Artifact("summary.json", loader=lambda p: json.loads(p.read_text()))
    producer = Experiment(numbers(), [publish(summary=out)], name="producer", replicates=2,
                          outputs=[out], treatments=[Treatment("broken", {"fail": True})],
                          plugins=[ArtifactPlugin(root_dir=root)])
    consumer = Experiment(out, [read()], name="consumer", replicates=2,
                          treatments=list(consumer_treatments))
    return producer, consumer


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "crystallize.cli", *args], cwd=cwd, capture_output=True,
        text=True, timeout=120, env={**os.environ, "PYTHONPATH": path, "COLUMNS": "250"},
    )


# -- 1. a failed upstream condition is never read as "never ran" -------------------------------
def test_units_downstream_of_a_failed_condition_fail_naming_the_upstream_failure():
    producer, consumer = producer_and_consumer()
    results = ExperimentGraph(producer, consumer).run(executor="process", max_workers=2)
    cons = results["consumer"]
    # the consumer inherits "broken": its units must not read the producer's baseline instead
    assert set(cons.errors) == {"broken_rep_0", "broken_rep_1"}
    error = cons.errors["broken_rep_0"]
    assert isinstance(error, UpstreamFailedError)
    assert "producer" in str(error) and "broken_rep_0 failed" in str(error)
    assert "cannot publish broken" in str(error)
    assert cons.metrics.treatments["broken"].metrics == {}
    assert cons.metrics.baseline.metrics["upstream_condition"] == ["baseline", "baseline"]

    # run on its own, the consumer reads the producer's stored run: the same refusal
    alone = consumer.run(executor="inline", treatments=[Treatment("broken", {})])
    assert set(alone.errors) == {"broken_rep_0", "broken_rep_1"}
    assert isinstance(alone.errors["broken_rep_1"], UpstreamFailedError)


def test_cli_exits_non_zero_when_any_unit_failed(tmp_path: Path):
    folder = tmp_path / "flaky"
    folder.mkdir()
    (folder / "config.yaml").write_text("replicates: 2\ndatasource: nums\nsteps:\n  - flaky\n")
    (folder / "datasources.py").write_text(
        "from crystallize import data_source\n\n@data_source\ndef nums(ctx):\n    return 1\n")
    (folder / "steps.py").write_text(textwrap.dedent("""\
        from crystallize import pipeline_step

        @pipeline_step()
        def flaky(data, ctx):
            if ctx["replicate"] == 1:
                raise ValueError("replicate one broke")
            return data, {"x": data}
    """))
    result = run_cli("run", "flaky", "--executor", "inline", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "failed units:" in out and "replicate one broke" in out


# -- 2. the fallback to an upstream's baseline is said, with the path -------------------------
def test_reading_the_upstream_baseline_for_an_unknown_condition_is_a_warning(caplog):
    producer, consumer = producer_and_consumer(consumer_treatments=[Treatment("extra", {})])
    producer.treatments = []
    consumer.plugins.append(LoggingPlugin())
    events = []
    with caplog.at_level(logging.WARNING, logger="crystallize"):
        results = ExperimentGraph(producer, consumer).run(executor="inline",
                                                          on_event=events.append)
    cons = results["consumer"]
    assert cons.metrics.treatments["extra"].metrics["upstream_condition"] == ["baseline"] * 2
    version_dir = str(results["producer"].version_dir)
    [warning] = cons.warnings
    assert "no condition 'extra'" in warning and version_dir in warning
    assert "baseline~r*~" in warning and "summary.json" in warning
    assert any(e.kind == "warning" and e.condition == "extra" for e in events)
    assert any(version_dir in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert results["producer"].warnings == []
    # a resumed run still says so
    again = consumer.run(strategy="resume", executor="inline")
    assert again.resumed and again.warnings == cons.warnings


def test_cli_summary_shows_the_fallback(tmp_path: Path):
    shutil.copytree(REPO / "examples" / "dag", tmp_path / "dag")
    result = run_cli("run", "dag", "--executor", "inline", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "warning: consumer [double]: producer v0 has no condition 'double'" in out


# -- 3. treatments never silently do nothing ----------------------------------------------------
@pipeline_step()
def fit(data, ctx, epochs=10, lr=0.1):
    return data, {"epochs": epochs, "lr": lr}


def test_a_treatment_beats_a_value_passed_explicitly():
    exp = Experiment(numbers(), [fit(epochs=25)], name="fit",
                     treatments=[Treatment("longer", {"epochs": 30})],
                     initial_ctx={"epochs": 99, "lr": 0.5})
    result = exp.run(executor="inline")
    assert result.metrics.baseline.metrics["epochs"] == [25]  # explicit beats initial_ctx
    assert result.metrics.baseline.metrics["lr"] == [0.5]  # context beats the default
    assert result.metrics.treatments["longer"].metrics["epochs"] == [30]  # treatment beats all
    assert result.warnings == []


def test_a_treatment_key_nothing_reads_is_an_error_before_anything_runs():
    exp = Experiment(numbers(), [fit()], name="typo", treatments=[Treatment("t", {"lrr": 0.01})])
    events = []
    with pytest.raises(UnreadTreatmentKeyError, match=r"'lrr'.*did you mean 'lr'\?"):
        exp.run(executor="inline", on_event=events.append)
    assert events == [] and not Path("data/typo").exists()
    assert isinstance(UnreadTreatmentKeyError("x"), ValueError)


def test_a_key_read_through_ctx_is_readable_and_one_left_unread_is_a_warning():
    @pipeline_step()
    def maybe(data, ctx):
        if ctx["replicate"] > 100:  # never true here: the key is readable but never read
            return data, {"lr": ctx.get("lr")}
        return data, {"seen": "momentum" in ctx}

    exp = Experiment(numbers(), [maybe()], name="maybe", replicates=2,
                     treatments=[Treatment("t", {"lr": 0.01, "momentum": 0.9})])
    events = []
    result = exp.run(executor="process", max_workers=2, on_event=events.append)
    assert result.errors == {}
    [warning] = result.warnings
    assert "'lr'" in warning and "[t]" in warning and "momentum" not in warning
    assert any(e.kind == "warning" and "'lr'" in (e.reason or "") for e in events)


def test_the_cli_reports_an_unreadable_treatment_key_as_a_user_mistake(tmp_path: Path):
    shutil.copytree(REPO / "examples" / "dag", tmp_path / "dag")
    config = tmp_path / "dag" / "consumer" / "config.yaml"
    config.write_text(config.read_text().replace("{factor: 2}", "{facter: 2}"))
    result = run_cli("run", "dag", "--executor", "inline", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    err = " ".join(result.stderr.split())
    assert "'facter'" in err and "did you mean 'factor'" in err and "Traceback" not in err


# -- 4. no mutation leaks between steps, units or into initial_ctx ------------------------------
class Counter:
    def __init__(self):
        self.n = 0


@pipeline_step()
def mutate(data, ctx):
    try:
        ctx["cfg"]["n"] += 1
        changed = "yes"
    except TypeError:
        changed = "refused"
    with contextlib.suppress(TypeError):
        ctx["cfg"]["items"].append(1)
    ctx["counter"].n += 1
    return data, {"changed": changed, "counter": ctx["counter"].n}


@pipeline_step()
def look(data, ctx, extra=None):
    return data, {"n": ctx["cfg"]["n"], "items": len(ctx["cfg"]["items"])}


@pytest.mark.parametrize("executor", ["inline", "thread", "process"])
def test_context_values_cannot_be_changed_in_place_on_any_executor(executor):
    initial = {"cfg": {"n": 1, "items": []}, "counter": Counter()}
    exp = Experiment(numbers(), [mutate(), look()], name=f"mut-{executor}", replicates=3,
                     initial_ctx=initial, treatments=[Treatment("t", {"extra": {"a": [1]}})])
    result = exp.run(executor=executor, max_workers=2)
    assert result.errors == {}
    for cond in ("baseline", "t"):
        m = result.metrics.condition(cond).metrics
        assert m["changed"] == ["refused"] * 3
        assert m["n"] == [1, 1, 1] and m["items"] == [0, 0, 0]
        assert m["counter"] == [1, 1, 1]  # an opaque object is a private copy per unit
    assert initial["cfg"] == {"n": 1, "items": []} and initial["counter"].n == 0


# -- 5. seeded randomness, identical on every executor -----------------------------------------
@pipeline_step()
def draw_rng(data, ctx):
    return data, {"draw": ctx.rng.random(), "again": ctx.rng.random()}


@pipeline_step()
def draw_global(data, ctx):
    return data, {"global": random.random()}


def test_ctx_rng_is_seeded_per_unit_and_identical_on_every_executor():
    exp = Experiment(numbers(), [draw_rng()], name="rng", replicates=4)
    runs = {ex: exp.run(executor=ex, max_workers=2).metrics.baseline.metrics
            for ex in ("inline", "thread", "process")}
    assert runs["inline"] == runs["thread"] == runs["process"]
    assert len(set(runs["inline"]["draw"])) == 4
    assert runs["inline"]["draw"] != runs["inline"]["again"]


def test_global_random_is_seeded_per_unit_where_units_are_isolated():
    exp = Experiment(numbers(), [draw_global()], name="global", replicates=3)
    inline = exp.run(executor="inline").metrics.baseline.metrics["global"]
    process = exp.run(executor="process", max_workers=2).metrics.baseline.metrics["global"]
    assert inline == process and len(set(inline)) == 3


def test_a_thread_run_warns_before_it_starts_when_steps_draw_from_a_global_rng():
    exp = Experiment(numbers(), [draw_global()], name="global-threads", replicates=2)
    events = []
    with pytest.warns(ReproducibilityWarning, match="draw_global.*ctx.rng"):
        result = exp.run(executor="thread", on_event=events.append)
    assert events[0].kind == "warning" and "draw_global" in (events[0].reason or "")
    assert any("draw_global" in w for w in result.warnings)
    safe = Experiment(numbers(), [draw_rng()], name="rng-threads", replicates=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReproducibilityWarning)
        assert safe.run(executor="thread").warnings == []


# -- 6. metrics lists hold recorded values only -------------------------------------------------
def test_failed_replicates_add_nothing_and_verifiers_never_see_none():
    seen = []

    @verifier
    def record_inputs(baseline, treatment):
        seen.append((baseline["x"], treatment["x"]))
        return {"p_value": 0.5, "mean": statistics.mean(treatment["x"])}

    @hypothesis(verifier=record_inputs(), metrics="x")
    def rank(out):
        return out["p_value"]

    @pipeline_step()
    def sometimes(data, ctx, bump=0):
        if ctx["replicate"] == 1:
            raise ValueError("replicate 1 fails")
        return data, {"x": ctx["replicate"] + bump}

    exp = Experiment(numbers(), [sometimes()], name="holes", replicates=3,
                     treatments=[Treatment("b", {"bump": 10})], hypotheses=[rank])
    result = exp.run(executor="process", max_workers=2)
    base = result.metrics.baseline
    assert base.metrics["x"] == [0, 2]
    assert base.by_replicate == {0: {"x": 0}, 1: {}, 2: {"x": 2}}
    assert result.metrics.treatments["b"].by_replicate[2] == {"x": 12}
    assert seen == [([0, 2], [10, 12])]
    assert result.get_hypothesis("rank").results["b"]["mean"] == 11


# -- 7. worker tracebacks travel with the error -------------------------------------------------
@pipeline_step()
def deep_failure(data, ctx):
    def inner_helper():
        raise KeyError("missing-thing")

    inner_helper()
    return data


def test_a_worker_traceback_is_carried_stored_and_printable():
    exp = Experiment(numbers(), [total(), deep_failure()], name="tb", replicates=2)
    with pytest.raises(ExperimentFailedError) as info:
        exp.run(executor="process", max_workers=2)
    result = info.value.results["tb"]
    error = result.errors["baseline_rep_0"]
    assert isinstance(error, KeyError)
    assert isinstance(error.__cause__, RemoteTraceback)
    text = unit_traceback(error)
    assert "inner_helper" in text and "deep_failure" in text and "missing-thing" in text
    assert "inner_helper" in str(error.__cause__)
    stored = json.loads((result.version_dir / "metadata.json").read_text())
    assert "inner_helper" in stored["conditions"]["baseline"]["tracebacks"]["0"]


def test_a_worker_traceback_names_the_files_of_a_folder_experiment(tmp_path: Path):
    # cloudpickle carries a folder experiment's modules to the worker by value and renames
    # their code's file; the traceback must still point at steps.py and show its lines.
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.yaml").write_text("name: bad\nreplicates: 1\ndatasource:\n"
                                        "  numbers: numbers\nsteps:\n  - explode\n")
    (folder / "datasources.py").write_text(
        "from crystallize import data_source\n\n@data_source\ndef numbers(ctx):\n"
        "    return [1]\n")
    steps = folder / "steps.py"
    steps.write_text("from crystallize import pipeline_step\n\ndef helper():\n"
                     "    raise ValueError('deep down')\n\n@pipeline_step()\n"
                     "def explode(data, ctx):\n    return helper()\n")
    exp = Experiment.from_yaml(folder / "config.yaml")
    exp.plugins.append(ArtifactPlugin(root_dir=str(tmp_path / "data")))
    with pytest.raises(ExperimentFailedError) as info:
        exp.run(executor="process", max_workers=1)
    text = unit_traceback(info.value.results["bad"].errors["baseline_rep_0"])
    assert f'File "{steps}", line 4, in helper' in text, text
    assert "raise ValueError('deep down')" in text and "<dynamic-code>" not in text


# -- 8. nothing after the units leaves a complete-looking version -------------------------------
def test_a_failing_verifier_leaves_no_complete_version_and_keeps_its_cause():
    calls = []

    @verifier
    def explode(baseline, treatment):
        calls.append(1)
        if len(calls) == 2:  # only in the second run
            raise ZeroDivisionError("verifier broke")
        return {"p_value": 0.1}

    @hypothesis(verifier=explode(), metrics="total")
    def rank(out):
        return out["p_value"]

    def build():
        return Experiment(numbers(), [scale(), total()], name="verified", replicates=2,
                          treatments=[Treatment("x2", {"factor": 2})], hypotheses=[rank])

    first = build().run(executor="inline")
    assert first.version == 0
    with pytest.raises(ExperimentFailedError) as info:
        build().run(executor="inline")
    cause = info.value.__cause__
    assert isinstance(cause, HypothesisError) and isinstance(cause.__cause__, ZeroDivisionError)
    partial = info.value.results["verified"]
    assert partial.failed and partial.metrics.treatments["x2"].metrics["total"] == [20, 20]
    store = Path("data/verified")
    meta = json.loads((store / "v1" / "metadata.json").read_text())
    assert meta["status"] == "failed"
    # the old complete version is untouched and nothing was moved aside to rot
    assert json.loads((store / "v0" / "metadata.json").read_text())["status"] == "complete"
    assert not [p for p in store.iterdir() if p.name.startswith(".trash")]
    # resume trusts v0, never the failed v1
    assert build().run(strategy="resume", executor="inline").version == 0


def test_a_failing_plugin_after_the_units_leaves_no_complete_version():
    class Broken(LoggingPlugin):
        def after_run(self, experiment, result):
            raise OSError("plugin broke")

    exp = Experiment(numbers(), [total()], name="plugged", plugins=[Broken()])
    with pytest.raises(ExperimentFailedError) as info:
        exp.run(executor="inline")
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.results["plugged"].metrics.baseline.metrics["total"] == [10]
    meta = json.loads(Path("data/plugged/v0/metadata.json").read_text())
    assert meta["status"] == "failed"


def test_a_ranker_may_return_anything_when_there_is_one_treatment():
    @verifier
    def compare(baseline, treatment):
        return {"diff": treatment["total"][0] - baseline["total"][0]}

    @hypothesis(verifier=compare(), metrics="total")
    def verdict(out):
        return {"bigger": out["diff"] > 0}  # not a number

    exp = Experiment(numbers(), [scale(), total()], name="ranked", hypotheses=[verdict],
                     treatments=[Treatment("x2", {"factor": 2})])
    result = exp.run(executor="inline")
    assert result.get_hypothesis("verdict").ranking == ["x2"]


# -- 9. unnamed experiments ---------------------------------------------------------------------
def test_unnamed_experiments_are_named_after_datasource_and_steps():
    exp = Experiment(numbers(), [scale(), total()])
    assert exp.name == "numbers-scale-total"

    def edited():
        @pipeline_step()
        def scale(data, ctx, factor=1):  # the same step with another body
            return [x * factor * 1.0 for x in data]

        return scale

    assert Experiment(numbers(), [edited()(), total()]).name == "numbers-scale-total"

    out = Artifact("totals.txt")

    @pipeline_step()
    def emit(data, ctx, totals: Artifact):
        totals.write(str(sum(data)))
        return data

    producer = Experiment(numbers(), [emit(totals=out)], outputs=[out])
    consumer = Experiment(out, [total()])
    assert (producer.name, consumer.name) == ("numbers-emit", "totals-total")
    graph = ExperimentGraph(producer, consumer)
    assert graph.edges == [("numbers-emit", "totals-total")]  # not a cycle
    with pytest.raises(GraphError, match="named 'numbers-scale-total'.*unnamed.*name="):
        ExperimentGraph(exp, Experiment(numbers(), [scale(), total()]))


# -- 10. a consumer on its own reads its producer's own store root ------------------------------
def test_consumer_run_alone_reads_the_producers_store_root():
    producer, consumer = producer_and_consumer(root="elsewhere")
    producer.treatments = []
    producer.run(executor="inline")
    assert Path("elsewhere/producer").is_dir() and not Path("data/producer").exists()
    result = consumer.run(executor="inline")
    assert result.errors == {}
    assert result.metrics.baseline.metrics["upstream"] == [10, 10]


# -- 11. LoggingPlugin(verbose=True) prints in a plain script -----------------------------------
def test_logging_plugin_prints_in_a_plain_script(tmp_path: Path):
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent("""\
        from crystallize import Experiment, LoggingPlugin, data_source, pipeline_step

        @data_source
        def numbers(ctx):
            return [1, 2]

        @pipeline_step()
        def total(data, ctx):
            return data, {"total": sum(data)}

        if __name__ == "__main__":
            Experiment(numbers(), [total()], name="plain",
                       plugins=[LoggingPlugin(verbose=True)]).run(executor="inline")
    """))
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr
    assert "plain [baseline rep 0] TotalStep done in" in done.stderr
    assert "plain: finished" in done.stderr
