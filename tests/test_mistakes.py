"""The catalogue of user mistakes: each answered clearly, before it costs anything.

One case per mistake. Each case does what a user would get wrong and hands back the error it
got: raised (config, API, command line), or recorded for the unit it broke. The test checks the
exact kind of error, that the message names the file, key or object at fault, and, where the
mistake can be known before the run, that nothing ran: no step executed, no store was written.
Add a case with every new error message.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import yaml

import crystallize
import crystallize.config._files
import crystallize.running._node
from crystallize import (
    Artifact,
    ArtifactPlugin,
    BasePlugin,
    ConfigError,
    Experiment,
    ExperimentGraph,
    Treatment,
    data_source,
    hypothesis,
    pipeline_step,
    verifier,
)
from crystallize.cli import main
from crystallize.errors import (
    CallbackError,
    ExperimentFailedError,
    HypothesisError,
    LimitError,
    LoaderError,
)
from crystallize.running._executors import UnitJob
from crystallize.store import ExperimentStore

from processes import is_alive

REPO = Path(crystallize.__file__).resolve().parents[1]

STEPS = """\
from pathlib import Path
from crystallize import Artifact, pipeline_step

@pipeline_step()
def scale(data, ctx, factor: int = 1):
    Path("ran").touch()  # the working directory is the test's: proves a step executed
    return data, {"score": (ctx["replicate"] + 1) * factor}
"""
VERIFIERS = """\
from crystallize import verifier

@verifier
def diff(baseline, treatment, alpha: float = 0.05):
    return {"p_value": alpha, "d": sum(treatment["score"]) - sum(baseline["score"])}

@verifier
def broken(baseline, treatment):
    raise ZeroDivisionError("no variance")
"""
CONFIG = """\
replicates: 2
steps:
  - scale
treatments:
  double: {factor: 2}
"""


class CliError(Exception):
    """``crystallize`` exited non-zero; the message is what it printed on stderr."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def cli(*args: str) -> None:
    """Run the command line in this process, as a user would type it; raise on failure."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(list(args))
    if code:
        raise CliError(code, err.getvalue() + out.getvalue())


def folder(root: Path, name: str = "exp", config: str = CONFIG, **modules: str) -> Path:
    """An experiment folder ``root/name`` with ``config.yaml`` and the given modules."""
    path = root / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(textwrap.dedent(config))
    for stem, source in {"steps": STEPS, "verifiers": VERIFIERS, **modules}.items():
        (path / f"{stem}.py").write_text(textwrap.dedent(source))
    return path


def unit_error(
    call: Callable[[], object], key: str = "baseline_rep_0", experiment: str = "e"
) -> BaseException:
    """The error unit ``key`` of ``experiment`` recorded, whether or not the run failed."""
    try:
        results = call()
    except ExperimentFailedError as exc:
        results = exc.results
    result = results[experiment] if isinstance(results, dict) else results
    return result.errors[key]  # type: ignore[attr-defined]


def succeeded(values: list) -> list:
    """A condition's metric values of the replicates that succeeded."""
    return [v for v in values if v is not None]


@pipeline_step()
def scale(data, ctx, factor: int = 1):
    Path("ran").touch()
    return data, {"score": (ctx["replicate"] + 1) * factor}


@data_source
def numbers(ctx):
    return [1, 2, 3]


def exp(*steps, **kw) -> Experiment:
    return Experiment(numbers(), list(steps) or [scale()], name=kw.pop("name", "e"), **kw)


@dataclass(frozen=True)
class Mistake:
    id: str
    act: Callable[[Path], object]  # raises the error, or returns the one a unit recorded
    error: type[BaseException]
    names: tuple[str, ...]  # what the message must name: the file, key or object at fault
    before_run: bool  # known before the run: nothing may have run or been stored


CASES: list[Mistake] = []


def mistake(error: type[BaseException], *names: str, before_run: bool = True):
    def register(act: Callable[[Path], object]) -> Callable[[Path], object]:
        CASES.append(Mistake(act.__name__, act, error, names, before_run))
        return act

    return register


# -- SPEC 3: names, references and syntax in a config -----------------------------------------
@mistake(ConfigError, "exp/config.yaml", "steps[0]", "'scael'", "did you mean 'scale'")
def unknown_step(tmp: Path) -> object:
    return ExperimentGraph.from_yaml(folder(tmp, config="steps: [scael]\n"))


@mistake(ConfigError, "exp/config.yaml", "'datasource'", "'lod'", "datasources.py")
def unknown_datasource(tmp: Path) -> object:
    config = "datasource: lod\nsteps: [scale]\n"
    return ExperimentGraph.from_yaml(folder(tmp, config=config, datasources="def load(ctx):\n"
                                            "    return 1\n"))


@mistake(ConfigError, "exp/config.yaml", "outputs.out.loader", "'load_jsn'")
def unknown_loader(tmp: Path) -> object:
    config = "steps: [first]\noutputs: {out: {file_name: o.json, loader: load_jsn}}\n"
    return ExperimentGraph.from_yaml(
        folder(tmp, config=config, steps=WRITE_TWICE, outputs=OUTPUTS))


@mistake(ConfigError, "exp/config.yaml", "hypotheses[0].verifier", "'dif'", "did you mean 'diff'")
def unknown_verifier(tmp: Path) -> object:
    config = CONFIG + "hypotheses: [{verifier: dif, metrics: score}]\n"
    return ExperimentGraph.from_yaml(folder(tmp, config=config))


def consumer_of(tmp: Path, reference: str) -> object:
    """Load a consumer whose datasource is ``reference``, next to a producer of output ``out``."""
    folder(tmp, "producer", config="steps: [first]\noutputs: {out: o.txt}\n", steps=WRITE_TWICE)
    folder(tmp, "consumer", config=f"datasource: {reference}\nsteps: [scale]\n")
    return ExperimentGraph.from_yaml(tmp / "consumer")


@mistake(ConfigError, "consumer/config.yaml", "'datasource'", "'producr'",
         "did you mean 'producer'")
def reference_to_a_missing_experiment(tmp: Path) -> object:
    return consumer_of(tmp, "producr#out")


@mistake(ConfigError, "consumer/config.yaml", "'datasource'", "no output 'ot'",
         "did you mean 'out'")
def reference_to_a_missing_output(tmp: Path) -> object:
    return consumer_of(tmp, "producer#ot")


@mistake(ConfigError, "exp/config.yaml", "outputs.summary", "written by no step")
def output_no_step_writes(tmp: Path) -> object:
    return ExperimentGraph.from_yaml(folder(tmp, config=CONFIG + "outputs: {summary: s.json}\n"))


@mistake(ConfigError, "exp/config.yaml", "malformed YAML at line", "unclosed")
def malformed_yaml(tmp: Path) -> object:
    return ExperimentGraph.from_yaml(folder(tmp, config="steps:\n  - [scale\n"))


@mistake(ConfigError, "exp/config.yaml", "'replicate'", "did you mean 'replicates'")
def unknown_top_level_key(tmp: Path) -> object:
    return ExperimentGraph.from_yaml(folder(tmp, config="replicate: 3\nsteps: [scale]\n"))


@mistake(ConfigError, "exp/config.yaml", "'steps'", "given twice")
def key_given_twice(tmp: Path) -> object:
    return ExperimentGraph.from_yaml(folder(tmp, config="steps: [scale]\nsteps: [scale]\n"))


@mistake(ConfigError, "config.yaml", "cycle", "a -> b -> a")
def folders_in_a_cycle(tmp: Path) -> object:
    both = "datasource: {x: %s#out}\nsteps: [first]\noutputs: {out: o.txt}\n"
    folder(tmp, "a", config=both % "b", steps=WRITE_TWICE)
    folder(tmp, "b", config=both % "a", steps=WRITE_TWICE)
    return ExperimentGraph.from_yaml(tmp / "a")


# -- config and plugin values of the wrong type -----------------------------------------------
@mistake(ConfigError, "exp/config.yaml", "plugins[0].ArtifactPlugin.versioned", "bool", "'no'")
def versioned_is_a_string(tmp: Path) -> object:
    path = folder(tmp, config=CONFIG + "plugins: [{ArtifactPlugin: {versioned: 'no'}}]\n")
    return ExperimentGraph.from_yaml(path)


@mistake(ConfigError, "exp/config.yaml", "plugins[0].ArtifactPlugin.artifact_retention",
         "'three'")
def retention_is_a_word(tmp: Path) -> object:
    path = folder(tmp, config=CONFIG + "plugins: [{ArtifactPlugin: {artifact_retention: three}}]\n")
    return ExperimentGraph.from_yaml(path)


@mistake(ConfigError, "exp/config.yaml", "plugins[0].LoggingPlugin.verbose", "'loud'")
def logging_verbose_is_a_word(tmp: Path) -> object:
    path = folder(tmp, config=CONFIG + "plugins: [{LoggingPlugin: {verbose: loud}}]\n")
    return ExperimentGraph.from_yaml(path)


@mistake(TypeError, "ArtifactPlugin", "versioned", "'no'")
def api_plugin_value_of_wrong_type(tmp: Path) -> object:
    return ArtifactPlugin(versioned="no")  # type: ignore[arg-type]


@mistake(ConfigError, "exp/config.yaml", "'timeout'", "'soon'")
def timeout_is_a_word(tmp: Path) -> object:
    return ExperimentGraph.from_yaml(folder(tmp, config=CONFIG + "timeout: soon\n"))


# -- steps whose metrics would silently vanish ------------------------------------------------
@mistake(TypeError, "step 'listed'", "2-tuple", "(data, {metric: value})", before_run=False)
def step_returns_metrics_in_a_list(tmp: Path) -> object:
    @pipeline_step()
    def listed(data, ctx):
        return data, [1.0]

    return unit_error(lambda: exp(listed()).run(executor="inline"))


@mistake(TypeError, "step 'triple'", "3-tuple", before_run=False)
def step_returns_a_3_tuple(tmp: Path) -> object:
    @pipeline_step()
    def triple(data, ctx):
        return data, {"a": 1}, {"b": 2}

    return unit_error(lambda: exp(triple()).run(executor="inline"))


# -- experiments left out, outputs half written -----------------------------------------------
@mistake(ConfigError, "broken/config.yaml", "folder, not a file")
def config_yaml_is_a_directory(tmp: Path) -> object:
    folder(tmp / "root", "good")
    (tmp / "root" / "broken" / "config.yaml").mkdir(parents=True)
    return ExperimentGraph.from_yaml(tmp / "root")


WRITE_TWICE = """\
from crystallize import Artifact, pipeline_step

@pipeline_step()
def first(data, ctx, out: Artifact):
    out.write("1")
    return data

@pipeline_step()
def second(data, ctx, out: Artifact):
    out.write("2")
    return data
"""


@mistake(ConfigError, "exp/config.yaml", "steps[1]", "'first'", "'second'", "'out'")
def output_written_by_two_steps(tmp: Path) -> object:
    config = "steps: [first, second]\noutputs: {out: out.txt}\n"
    return ExperimentGraph.from_yaml(folder(tmp, config=config, steps=WRITE_TWICE))


@mistake(ValueError, "experiment 'e'", "'out.txt'", "'first'", "'second'")
def api_output_written_by_two_steps(tmp: Path) -> object:
    @pipeline_step()
    def first(data, ctx, out: Artifact):
        out.write("1")

    @pipeline_step()
    def second(data, ctx, out: Artifact):
        out.write("2")

    return exp(first(), second(), outputs={"out": Artifact("out.txt")})


@mistake(RuntimeError, "step 'sometimes'", "'out.txt'", "replicate 1", before_run=False)
def output_written_by_some_replicates(tmp: Path) -> object:
    @pipeline_step()
    def sometimes(data, ctx, out: Artifact):
        if ctx["replicate"] == 0:
            out.write("only the first")
        return data

    experiment = exp(sometimes(), outputs={"out": Artifact("out.txt")}, replicates=2)
    return unit_error(lambda: experiment.run(executor="inline"), "baseline_rep_1")


# -- hypotheses -------------------------------------------------------------------------------
@mistake(ExperimentFailedError, "hypothesis 'better'", "'scor'", "did you mean 'score'",
         "exp/config.yaml", "hypotheses[0]", before_run=False)
def hypothesis_metric_no_step_records(tmp: Path) -> object:
    config = CONFIG + "hypotheses: [{name: better, verifier: diff, metrics: scor}]\n"
    graph = ExperimentGraph.from_yaml(folder(tmp, config=config))
    with pytest.raises(ExperimentFailedError) as failed:
        graph.run(executor="inline")
    assert ExperimentStore((tmp / "data").resolve(), "exp").newest_complete() is None, \
        "a resume must not trust this run"
    return failed.value


@mistake(ConfigError, "exp/config.yaml", "hypotheses[0].verifier.diff.alpha", "float", "'high'")
def verifier_parameter_of_wrong_type(tmp: Path) -> object:
    config = CONFIG + "hypotheses: [{name: h, verifier: {diff: {alpha: high}}, metrics: score}]\n"
    return ExperimentGraph.from_yaml(folder(tmp, config=config))


@mistake(ExperimentFailedError, "HypothesisError", "hypothesis 'h'", "verifier 'broken'",
         "exp/config.yaml", "hypotheses[0]", "ZeroDivisionError", before_run=False)
def verifier_raises(tmp: Path) -> object:
    config = CONFIG + "hypotheses: [{name: h, verifier: broken, metrics: score}]\n"
    graph = ExperimentGraph.from_yaml(folder(tmp, config=config))
    with pytest.raises(ExperimentFailedError) as failed:
        graph.run(executor="inline")
    return failed.value


@mistake(HypothesisError, "hypothesis 'h'", "verifier 'fine'", "ranker raised ValueError",
         before_run=False)
def api_ranker_raises(tmp: Path) -> object:
    @verifier
    def fine(baseline, treatment):
        return {"p_value": 0.5}

    def ranker(output):
        raise ValueError("cannot rank")

    h = hypothesis(verifier=fine(), metrics="score", name="h")(ranker)
    with pytest.raises(HypothesisError) as raised:
        h.evaluate({"score": [1.0]}, {"t": {"score": [2.0]}})
    return raised.value


# -- step parameters of the wrong type --------------------------------------------------------
@mistake(ConfigError, "exp/config.yaml", "steps[0].scale.factor", "int", "'two'")
def step_parameter_of_wrong_type(tmp: Path) -> object:
    config = "steps:\n  - scale: {factor: two}\n"
    return ExperimentGraph.from_yaml(folder(tmp, config=config))


@mistake(ConfigError, "exp/config.yaml", "treatments.double.factor", "step 'scale'", "'two'")
def treatment_value_of_wrong_type(tmp: Path) -> object:
    config = "steps: [scale]\ntreatments:\n  double: {factor: two}\n"
    return ExperimentGraph.from_yaml(folder(tmp, config=config))


@mistake(TypeError, "experiment 'e'", "treatment 'double'", "step 'scale'", "'two'")
def api_treatment_value_of_wrong_type(tmp: Path) -> object:
    return exp(treatments=[Treatment("double", {"factor": "two"})])


@mistake(TypeError, "scale()", "'factor'", "int", "'two'")
def api_step_parameter_of_wrong_type(tmp: Path) -> object:
    return scale(factor="two")


# -- loaders ----------------------------------------------------------------------------------
PRODUCER_STEPS = """\
from crystallize import Artifact, pipeline_step

@pipeline_step()
def produce(data, ctx, summary: Artifact):
    summary.write("not json")
    return data, {"n": 1}
"""
OUTPUTS = """\
import json

def load_json(path):
    return json.loads(path.read_text())
"""
CONSUMER_STEPS = """\
from crystallize import pipeline_step

@pipeline_step()
def use(data, ctx):
    return data, {"n": 1}
"""


@mistake(LoaderError, "loader 'load_json'", "producer#summary.json", "JSONDecodeError",
         "summary.json", before_run=False)
def loader_raises(tmp: Path) -> object:
    folder(tmp / "root", "producer", config="steps: [produce]\noutputs:\n  summary: "
           "{file_name: summary.json, loader: load_json}\n", steps=PRODUCER_STEPS, outputs=OUTPUTS)
    folder(tmp / "root", "consumer", config="datasource: producer#summary\nsteps: [use]\n",
           steps=CONSUMER_STEPS)
    graph = ExperimentGraph.from_yaml(tmp / "root")
    error = unit_error(lambda: graph.run(executor="inline"), experiment="consumer")
    assert "(reading " in str(error) and str(tmp / "data" / "producer") in str(error)
    return error


# -- metrics that could not be stored ---------------------------------------------------------
@mistake(TypeError, "metric 'loop'", "contains itself", before_run=False)
def metric_refers_to_itself(tmp: Path) -> object:
    @pipeline_step()
    def loop(data, ctx):
        value: list = [1]
        value.append(value)
        ctx.record("loop", value)

    return unit_error(lambda: exp(loop()).run(executor="inline"))


@mistake(TypeError, "metric 'pairs'", "tuple key ('a', 'b')", before_run=False)
def metric_with_tuple_keys(tmp: Path) -> object:
    @pipeline_step()
    def pairs(data, ctx):
        ctx.record("pairs", {("a", "b"): 1})

    return unit_error(lambda: exp(pairs()).run(executor="inline"))


@mistake(TypeError, "metric names", "('a', 'b')", before_run=False)
def metric_named_by_a_tuple(tmp: Path) -> object:
    @pipeline_step()
    def named(data, ctx):
        ctx.record(("a", "b"), 1)

    return unit_error(lambda: exp(named()).run(executor="inline"))


# -- a step or a callback that ends more than its own part ------------------------------------
@mistake(RuntimeError, "step 'quits'", "sys.exit(3)", before_run=False)
def step_calls_sys_exit(tmp: Path) -> object:
    @pipeline_step()
    def quits(data, ctx):
        if ctx["replicate"] == 0:
            sys.exit(3)
        return data, {"ok": 1}

    result = exp(quits(), replicates=2).run(executor="process", max_workers=1)
    assert succeeded(result.metrics.baseline.metrics["ok"]) == [1], "the other unit went on"
    return result.errors["baseline_rep_0"]


@mistake(RuntimeError, "step 'interrupted'", "KeyboardInterrupt", before_run=False)
def step_raises_keyboard_interrupt(tmp: Path) -> object:
    @pipeline_step()
    def interrupted(data, ctx):
        if ctx["replicate"] == 0:
            raise KeyboardInterrupt
        return data, {"ok": 1}

    result = exp(interrupted(), replicates=2).run(executor="thread")
    assert succeeded(result.metrics.baseline.metrics["ok"]) == [1]
    return result.errors["baseline_rep_0"]


@mistake(CallbackError, "on_event callback", "progress", "OSError", "pipe closed",
         before_run=False)
def on_event_callback_raises(tmp: Path) -> object:
    def progress(event):
        raise OSError("pipe closed")

    with pytest.raises(CallbackError) as raised:
        exp().run(executor="inline", on_event=progress)
    assert isinstance(raised.value.__cause__, OSError)
    return raised.value


@mistake(CallbackError, "plugin Noisy.on_event", "ValueError", before_run=False)
def plugin_on_event_raises(tmp: Path) -> object:
    class Noisy(BasePlugin):
        def on_event(self, experiment, event):
            raise ValueError("bad event")

    with pytest.raises(CallbackError) as raised:
        exp(plugins=[Noisy()]).run(executor="inline")
    return raised.value


# -- names that become folders of the store ---------------------------------------------------
@mistake(ConfigError, "exp/config.yaml", "treatments.", "NUL")
def treatment_name_with_nul(tmp: Path) -> object:
    config = 'steps: [scale]\ntreatments:\n  "a\\0b": {factor: 2}\n'
    return ExperimentGraph.from_yaml(folder(tmp, config=config))


@mistake(ConfigError, "exp/config.yaml", "treatments.metadata.json", "the store writes itself")
def treatment_named_like_a_store_file(tmp: Path) -> object:
    config = "steps: [scale]\ntreatments:\n  metadata.json: {factor: 2}\n"
    return ExperimentGraph.from_yaml(folder(tmp, config=config))


@mistake(ConfigError, "exp/config.yaml", "'name'", "'replicate_0'", "the store writes itself")
def experiment_named_like_a_store_folder(tmp: Path) -> object:
    return ExperimentGraph.from_yaml(folder(tmp, config="name: replicate_0\nsteps: [scale]\n"))


@mistake(ValueError, "experiment name 'a\\x00b'", "NUL")
def api_experiment_name_with_nul(tmp: Path) -> object:
    return exp(name="a\0b")


@mistake(ValueError, "treatment name 'results.json'")
def api_treatment_named_like_a_store_file(tmp: Path) -> object:
    return Treatment("results.json", {"factor": 2})


# -- the command line -------------------------------------------------------------------------
@mistake(CliError, "exp/steps.py", "not a config")
def run_a_python_file(tmp: Path) -> object:
    folder(tmp)
    return cli("run", "exp/steps.py")


@mistake(CliError, "-o /proc/x.svg", "cannot write it")
def graph_output_cannot_be_written(tmp: Path) -> object:
    folder(tmp)
    return cli("graph", "exp", "-o", "/proc/x.svg")


@mistake(CliError, "data:", "is a file, not a folder", "root_dir")
def store_root_is_a_file(tmp: Path) -> object:
    folder(tmp)
    (tmp / "data").write_text("")
    return cli("run", "exp")


@mistake(CliError, "crystallize ui needs a terminal", "crystallize run")
def ui_without_a_terminal(tmp: Path) -> object:
    folder(tmp)
    proc = subprocess.run(
        [sys.executable, "-m", "crystallize.cli", "ui", "."], cwd=tmp, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "1000"},
    )
    assert "Traceback" not in proc.stderr and "\x1b[?" not in proc.stdout  # no screen drawn
    raise CliError(proc.returncode, proc.stderr)


# -- absurd sizes: refused before they cost memory or time ------------------------------------
@mistake(CliError, "--replicates", "1,000,000,000", "100,000", "CRYSTALLIZE_MAX_REPLICATES")
def replicates_absurd_on_the_command_line(tmp: Path) -> object:
    folder(tmp)
    return cli("run", "exp", "--replicates", "1000000000")


@mistake(CliError, "--replicates", "1,000,000,000", "CRYSTALLIZE_MAX_REPLICATES")
def replicates_absurd_in_scientific_notation(tmp: Path) -> object:
    folder(tmp)
    return cli("run", "exp", "--replicates", "1e9")


@mistake(ConfigError, "exp/config.yaml", "'replicates'", "100,000", "CRYSTALLIZE_MAX_REPLICATES")
def replicates_absurd_in_a_config(tmp: Path) -> object:
    return ExperimentGraph.from_yaml(folder(tmp, config="replicates: 1000000000\nsteps: [scale]\n"))


@mistake(LimitError, "run()", "CRYSTALLIZE_MAX_REPLICATES")
def replicates_absurd_in_run(tmp: Path) -> object:
    return exp().run(replicates=10**9, executor="inline")


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
) + "steps: [scale]\n"


@mistake(ConfigError, "exp/config.yaml", "aliases", "CRYSTALLIZE_MAX_YAML_NODES")
def yaml_alias_bomb(tmp: Path) -> object:
    assert len(BOMB) < 600
    return ExperimentGraph.from_yaml(folder(tmp, config=BOMB))


@mistake(CliError, "exp/config.yaml", "aliases")
def yaml_alias_bomb_in_status(tmp: Path) -> object:
    folder(tmp, config=BOMB)
    return cli("status", "exp")


@mistake(CliError, "exp/config.yaml", "aliases")
def yaml_alias_bomb_in_list(tmp: Path) -> object:
    folder(tmp, config=BOMB)
    return cli("list", ".")


@mistake(ConfigError, "exp/config.yaml", "1,000,000", "CRYSTALLIZE_MAX_CONFIG_BYTES")
def config_too_large(tmp: Path) -> object:
    path = folder(tmp)
    with (path / "config.yaml").open("a") as f:
        f.write("description: " + "x" * 1_100_000 + "\n")
    return ExperimentGraph.from_yaml(path)


# -- steps that never return ------------------------------------------------------------------
STUCK = """\
import os, time
from pathlib import Path
from crystallize import pipeline_step

@pipeline_step()
def stuck(data, ctx):
    if ctx["replicate"] == 0:
        Path("stuck.pid").write_text(str(os.getpid()))
        while True:
            try:
                time.sleep(60)
            except TimeoutError:
                pass  # deaf to its timer: only stopping its process ends it
    return data, {"ok": 1}
"""


SLEEPY = """\
import time
from crystallize import pipeline_step

@pipeline_step()
def nap(data, ctx):
    if ctx["replicate"] == 0:
        time.sleep(60)  # the unit's timer interrupts the sleep
    return data, {"ok": 1}
"""


@mistake(TimeoutError, "experiment 'exp'", "step 'nap'", "timeout of 0.4 s", before_run=False)
def step_never_returns_config_step_timeout(tmp: Path) -> object:
    config = "replicates: 2\nsteps:\n  - {nap: {}, timeout: 0.4}\n"
    graph = ExperimentGraph.from_yaml(folder(tmp, config=config, steps=SLEEPY))
    result = graph.run(executor="process", max_workers=1)["exp"]
    assert succeeded(result.metrics.baseline.metrics["ok"]) == [1]
    return result.errors["baseline_rep_0"]


@mistake(TimeoutError, "experiment 'exp'", "replicate 0", "timeout of 0.5 s", before_run=False)
def step_never_returns_config_timeout(tmp: Path) -> object:
    graph = ExperimentGraph.from_yaml(
        folder(tmp, config="replicates: 3\ntimeout: 0.5\nsteps: [stuck]\n", steps=STUCK))
    result = graph.run(executor="process", max_workers=2)["exp"]
    assert succeeded(result.metrics.baseline.metrics["ok"]) == [1, 1], "the others went on"
    assert not is_alive(int((tmp / "stuck.pid").read_text())), "its worker was stopped"
    return result.errors["baseline_rep_0"]


@pipeline_step(timeout=0.3)
def sleepy(data, ctx):
    if ctx["replicate"] == 0:
        time.sleep(60)  # the unit's timer interrupts the sleep
    return data, {"ok": 1}


@mistake(TimeoutError, "step 'sleepy'", "timeout of 0.3 s", before_run=False)
def step_never_returns_api_timeout(tmp: Path) -> object:
    errors = []
    for executor in ("process", "inline"):
        result = exp(sleepy(), replicates=2).run(executor=executor, max_workers=1)
        assert succeeded(result.metrics.baseline.metrics["ok"]) == [1], executor
        errors.append(result.errors["baseline_rep_0"])
    assert str(errors[0]) == str(errors[1])
    return errors[0]


@mistake(TimeoutError, "experiment 't'", "replicate 0", "timeout of 0.3 s", before_run=False)
def step_never_returns_in_a_thread(tmp: Path) -> object:
    release = threading.Event()

    @pipeline_step()
    def slow(data, ctx):
        if ctx["replicate"] == 0:
            release.wait(60)
        return data, {"ok": 1}

    try:
        # A thread cannot be stopped from outside: its unit fails, the thread is abandoned.
        result = exp(slow(), replicates=2, name="t", timeout=0.3).run(executor="thread")
        assert succeeded(result.metrics.baseline.metrics["ok"]) == [1]
        return result.errors["baseline_rep_0"]
    finally:
        release.set()


@mistake(TimeoutError, "step 'waits'", "timeout of 0.2 s", before_run=False)
def async_step_never_returns(tmp: Path) -> object:
    @pipeline_step(timeout=0.2)
    async def waits(data, ctx):
        if ctx["replicate"] == 0:
            await anyio.sleep(60)
        return data, {"ok": 1}

    result = exp(waits(), replicates=2).run()
    assert succeeded(result.metrics.baseline.metrics["ok"]) == [1]
    return result.errors["baseline_rep_0"]


@mistake(ValueError, "experiment 'e'", "timeout", "'soon'")
def api_timeout_is_a_word(tmp: Path) -> object:
    return exp(timeout="soon")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_mistake(case: Mistake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich would wrap the messages at 80 columns
    try:
        got = case.act(tmp_path)
    except Exception as exc:
        got = exc
    assert type(got) is case.error, f"{case.id}: expected {case.error.__name__}, got {got!r}"
    assert isinstance(got, BaseException)
    message = " ".join(str(got).split())
    for name in case.names:
        assert name in message, f"{case.id}: {name!r} not in {message!r}"
    if isinstance(got, CliError):
        assert "Traceback" not in message
        assert got.code == (1 if case.id == "store_root_is_a_file" else 2), message
    if case.before_run:
        assert not (tmp_path / "ran").exists(), f"{case.id}: a step ran"
        assert not (tmp_path / "data").is_dir(), f"{case.id}: the store was written"


def test_every_case_has_its_own_name() -> None:
    assert len({case.id for case in CASES}) == len(CASES)


def test_libyaml_parses_configs_when_it_is_installed() -> None:
    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML was built without libyaml here")
    assert crystallize.config._files._YAML_LOADER is yaml.CSafeLoader


def test_limits_are_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYSTALLIZE_MAX_REPLICATES", "3")
    with pytest.raises(LimitError, match="CRYSTALLIZE_MAX_REPLICATES=4"):
        exp(replicates=4)
    monkeypatch.setenv("CRYSTALLIZE_MAX_REPLICATES", "1000000000")
    assert exp(replicates=10**9).replicates == 10**9
    monkeypatch.setenv("CRYSTALLIZE_MAX_CONFIG_BYTES", "10")
    with pytest.raises(ConfigError, match="CRYSTALLIZE_MAX_CONFIG_BYTES"):
        ExperimentGraph.from_yaml(folder(tmp_path))


def test_units_are_not_all_made_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crystallize.running._node, "UNIT_WINDOW", 8)
    alive: list[int] = []

    @pipeline_step()
    def count(data, ctx):
        if ctx["replicate"] % 25 == 0:
            alive.append(sum(isinstance(o, UnitJob) and o.experiment.name == "window"
                             for o in gc.get_objects()))
        return data, {"r": ctx["replicate"]}

    result = exp(count(), replicates=200, name="window").run(executor="inline")
    assert result.metrics.baseline.metrics["r"] == list(range(200))
    # The window's units, and at most one that just finished and is not yet let go of.
    assert alive and max(alive) <= 8 + 1


def test_read_only_lock_is_a_message_not_a_traceback() -> None:
    """A store lock file the user may not write: the run works or says which file, no
    traceback. Root may write any file, so as root the run is done as an unprivileged user."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop privileges")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    with tempfile.TemporaryDirectory() as base:
        work = Path(base)
        folder(work)
        for path in [work, *work.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o666)
        env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "1000"}

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*prefix, sys.executable, "-m", "crystallize.cli", "run", "exp"], cwd=work,
                env=env, capture_output=True, text=True, timeout=120,
            )

        assert run().returncode == 0
        lock = work / "data" / "exp" / ".lock"
        lock.touch()
        lock.chmod(0o444)
        if prefix:
            os.chown(lock, 65534, 65534)
        second = run()
        said = " ".join((second.stdout + second.stderr).split())
        assert "Traceback" not in said
        assert second.returncode == 0 or (
            "exp/.lock" in said and "make it writable (chmod u+w) or delete it" in said), said


def test_numpy_scalars_fit_number_and_bool_annotations() -> None:
    # The type check refuses mistakes, not numpy's scalars standing in for Python's.
    numpy = pytest.importorskip("numpy")

    @pipeline_step()
    def typed(data, ctx, n: int = 1, x: float = 1.0, flag: bool = False):
        return data

    typed(n=numpy.int64(3), x=numpy.float32(0.5), flag=numpy.bool_(True))
    with pytest.raises(TypeError, match="'n' is annotated int, got 2.5"):
        typed(n=2.5)
