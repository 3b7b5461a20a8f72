"""The day-to-day workflow around a run (SPEC §6): choosing what runs, seeing failures, comparing
results, pictures, housekeeping. The CLI runs as a real subprocess (in a real terminal where it
draws), on copies of ``examples/dag``."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sys
from pathlib import Path

import anyio
import pytest
from test_cli import _env, cli, ok, user_mistake

import crystallize
from crystallize import Experiment, ExperimentGraph, data_source, pipeline_step
from crystallize.errors import ConfigError, ExperimentFailedError
from crystallize.store import ExperimentStore

from terminal import run_in_terminal

REPO = Path(crystallize.__file__).resolve().parents[1]


def versions(cwd: Path, name: str) -> list[int]:
    return ExperimentStore(cwd / "data", name).version_numbers()


@pytest.fixture
def dag(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "examples" / "dag", tmp_path / "dag")
    return tmp_path / "dag"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path} no longer holds {old!r}"
    path.write_text(text.replace(old, new))


def _failing_consumer(dag: Path) -> None:
    _edit(dag / "consumer" / "steps.py", '    summary = data["producer_summary"]\n',
          '    summary = data["producer_summary"]\n    raise ValueError("boom")\n')


# -- choosing what runs -----------------------------------------------------------------------
def test_run_selects_experiments_by_name_with_their_prerequisites(dag: Path) -> None:
    cwd = dag.parent
    out = ok(cli("run", "dag", "producer", cwd=cwd))
    assert "producer (executed -> v0" in out and "consumer" not in out
    assert versions(cwd, "producer") == [0] and versions(cwd, "consumer") == []

    out = ok(cli("run", "dag", "consumer", cwd=cwd))  # its producer comes along (resumed)
    assert "producer (resumed v0" in out and "consumer (executed -> v0" in out

    err = user_mistake(cli("run", "dag", "consumr", cwd=cwd))
    assert "consumr: no experiment of that name" in err and "did you mean 'consumer'" in err


def test_force_reruns_the_experiment_and_everything_downstream(dag: Path) -> None:
    cwd = dag.parent
    ok(cli("run", "dag", cwd=cwd))
    out = ok(cli("run", "dag", cwd=cwd))  # both under resume: nothing reruns
    assert "producer (resumed v0" in out and "consumer (resumed v0" in out

    # The producer's rerun writes byte-identical artifacts, which alone would leave the
    # consumer reused; forcing reruns it as well.
    out = ok(cli("run", "dag", "--force", "producer", cwd=cwd))
    assert "producer (executed -> v1" in out and "consumer (executed -> v1" in out

    out = ok(cli("run", "dag", "--force", "consumer", cwd=cwd))
    assert "producer (resumed v1" in out and "consumer (executed -> v2" in out

    err = user_mistake(cli("run", "dag", "--force", "prodcer", cwd=cwd))
    assert "--force prodcer" in err and "did you mean 'producer'" in err
    err = user_mistake(cli("run", "dag", "producer", "--force", "consumer", cwd=cwd))
    assert "--force consumer" in err  # not part of what runs


@data_source
def _zero(ctx) -> int:
    return 0


@pipeline_step()
def _explode(data, ctx):
    raise ValueError("exploded")


@pipeline_step()
async def _wait_forever(data, ctx):
    await anyio.sleep_forever()


@pipeline_step()
def _fine(data, ctx):
    return data, {"value": ctx["replicate"]}


def test_fail_fast_stops_the_run_at_the_first_failed_unit(tmp_path: Path) -> None:
    def graph() -> ExperimentGraph:
        plugin = crystallize.ArtifactPlugin(root_dir=str(tmp_path / "data"))
        return ExperimentGraph(
            Experiment(_zero(), [_explode()], name="boom", plugins=[plugin]),
            Experiment(_zero(), [_wait_forever()], name="endless", plugins=[plugin]),
        )

    async def main() -> ExperimentFailedError:
        # Without fail-fast, "endless" would keep the run going for ever.
        with anyio.fail_after(30), pytest.raises(ExperimentFailedError) as caught:
            await graph().arun(executor="inline", fail_fast=True)
        return caught.value

    error = anyio.run(main)
    assert error.failures["boom"] == "baseline rep 0 failed: ValueError: exploded"
    assert error.failures["endless"] == "stopped after boom [baseline rep 0] failed (fail-fast)"
    assert "endless" not in error.results
    for name in ("boom", "endless"):  # nothing half done is marked complete
        assert ExperimentStore(tmp_path / "data", name).newest_complete() is None


def test_fail_fast_from_the_command_line(dag: Path) -> None:
    _failing_consumer(dag)
    result = cli("run", "dag", "--fail-fast", "--workers", "1", cwd=dag.parent)
    assert result.returncode == 1, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    # The first failed unit ended the run: the cause names it, not "all 6 unit(s) failed".
    assert re.search(r"consumer: (baseline|double) rep \d failed: ValueError: boom", out), out
    assert "all 6 unit(s) failed" not in out
    assert ExperimentStore(dag.parent / "data", "consumer").newest_complete() is None


def test_without_fail_fast_every_branch_that_can_runs(tmp_path: Path) -> None:
    plugin = crystallize.ArtifactPlugin(root_dir=str(tmp_path / "data"))
    with pytest.raises(ExperimentFailedError) as caught:
        ExperimentGraph(
            Experiment(_zero(), [_explode()], name="boom", plugins=[plugin]),
            Experiment(_zero(), [_fine()], name="fine", replicates=2, plugins=[plugin]),
        ).run(executor="inline")
    assert list(caught.value.failures) == ["boom"]
    assert caught.value.results["fine"].metrics.baseline.metrics["value"] == [0, 1]


_FLAKY_STEPS = '''
from pathlib import Path
from crystallize import pipeline_step


@pipeline_step()
def flaky(data, ctx, marks: str = ""):
    """Fails the first time each unit runs: a flaky resource."""
    mark = Path(marks) / f"{ctx['condition']}-{ctx['replicate']}"
    if not mark.exists():
        mark.write_text("tried")
        raise ConnectionError("flaky resource")
    return data, {"value": ctx["replicate"]}
'''


def _flaky_experiment(root: Path, retries: int) -> Path:
    folder = root / "flaky"
    folder.mkdir(parents=True)
    (root / "marks").mkdir()
    (folder / "steps.py").write_text(_FLAKY_STEPS)
    (folder / "datasources.py").write_text(
        "from crystallize import data_source\n\n@data_source\ndef nothing(ctx):\n    return 0\n")
    (folder / "config.yaml").write_text(
        f"replicates: 2\nretries: {retries}\ndatasource: nothing\n"
        f"initial_ctx: {{marks: {json.dumps(str(root / 'marks'))}}}\nsteps:\n  - flaky\n")
    return folder


def test_retries_in_config_rerun_flaky_units_and_say_so(tmp_path: Path) -> None:
    _flaky_experiment(tmp_path, retries=2)
    code, out = run_in_terminal(
        [sys.executable, "-m", "crystallize.cli", "run", "flaky"], cwd=tmp_path,
        env=_env(TERM="xterm-256color"))
    assert code == 0, out
    text = " ".join(out.split())
    assert "flaky [baseline rep 0] done after 2 attempts" in text
    assert "flaky [baseline rep 1] done after 2 attempts" in text
    stored = json.loads((tmp_path / "data" / "flaky" / "v0" / "metadata.json").read_text())
    stored = stored["conditions"]["baseline"]
    assert stored["metrics"]["value"] == [0, 1]
    assert [t["attempts"] for t in stored["timings"]] == [2, 2]
    assert stored["timings"][0]["retried"] == ["ConnectionError: flaky resource"]


def test_without_retries_a_flaky_unit_fails(tmp_path: Path) -> None:
    _flaky_experiment(tmp_path, retries=0)
    result = cli("run", "flaky", cwd=tmp_path)
    assert result.returncode == 1 and "flaky resource" in result.stdout


def test_experiment_retries_and_their_validation(tmp_path: Path) -> None:
    plugin = crystallize.ArtifactPlugin(root_dir=str(tmp_path / "data"))
    events = []
    attempts: dict[int, int] = {}

    @pipeline_step()
    def once_flaky(data, ctx):
        attempts[ctx["replicate"]] = attempts.get(ctx["replicate"], 0) + 1
        if attempts[ctx["replicate"]] == 1:
            raise OSError("try again")
        return data, {"ok": 1}

    exp = Experiment(_zero(), [once_flaky()], name="retried", replicates=2, retries=1,
                     plugins=[plugin])
    result = ExperimentGraph(exp).run(executor="inline", on_event=events.append)["retried"]
    assert result.metrics.baseline.metrics["ok"] == [1, 1] and not result.errors
    finished = [e for e in events if e.kind == "unit_finished"]
    assert [e.attempts for e in finished] == [2, 2]
    assert finished[0].describe() == "retried [baseline rep 0] done after 2 attempts"

    with pytest.raises(ValueError, match="retries must be a whole number >= 0"):
        Experiment(_zero(), [_fine()], name="bad", retries=-1)
    folder = _flaky_experiment(tmp_path / "cfg", retries=0)
    _edit(folder / "config.yaml", "retries: 0", "retries: often")
    with pytest.raises(ConfigError, match=r"config.yaml, key 'retries': retries must be"):
        crystallize.Experiment.from_yaml(folder / "config.yaml")


# -- seeing failures --------------------------------------------------------------------------
def _failed_units(stdout: str) -> str:
    return stdout[stdout.index("failed units:"):stdout.index("experiment(s) failed")]


def test_tb_shows_worker_tracebacks_of_failed_units(dag: Path) -> None:
    _failing_consumer(dag)
    cwd = dag.parent

    def run(*tb: str) -> str:
        result = cli("run", "dag", "--executor", "process", *tb, cwd=cwd)
        assert result.returncode == 1, result.stdout + result.stderr
        return _failed_units(result.stdout)

    first_in_full = run()  # 2 conditions x 3 replicates failed
    assert first_in_full.count("ValueError: boom") == 7  # 6 lines + the traceback's last
    assert first_in_full.count("Traceback") == 1
    # the step's own frame, from the worker process, with its file and line
    assert "in inspect_summary" in first_in_full
    assert re.search(r'consumer[/\\]steps\.py", line \d+, in inspect_summary', first_in_full)

    everything = run("--tb", "long")
    assert everything.count("Traceback") == 6 and everything.count("in inspect_summary") == 6
    short = run("--tb", "short")
    assert "Traceback" not in short and short.count("ValueError: boom") == 6
    none = run("--tb", "no")
    assert "boom" not in none and none.count("] failed") == 6

    err = " ".join(cli("run", "dag", "--tb", "medium", cwd=cwd).stderr.split())
    assert "usage: crystallize run" in err and "invalid choice: 'medium'" in err


# -- comparing results ------------------------------------------------------------------------
def test_metrics_show_stored_versions_side_by_side_and_export(dag: Path) -> None:
    cwd = dag.parent
    # Keep the last three versions, so there is a history to compare.
    for name in ("producer", "consumer"):
        config = dag / name / "config.yaml"
        config.write_text(config.read_text() + "plugins:\n  - ArtifactPlugin: "
                          "{versioned: true, artifact_retention: 3}\n")
    ok(cli("run", "dag", cwd=cwd))
    _edit(dag / "consumer" / "steps.py", 'summary["mean"] * factor', 'summary["mean"] * factor + 1')
    ok(cli("run", "dag", cwd=cwd))
    assert sorted(versions(cwd, "consumer")) == [0, 1]

    table = " ".join(ok(cli("metrics", "dag", cwd=cwd)).split())
    assert "consumer" in table and "v0" in table and "v1" in table and "score" in table

    rows = list(csv.DictReader(io.StringIO(ok(cli("metrics", "dag", "--format", "csv",
                                                  cwd=cwd)))))
    score = {(r["condition"], r["version"]): float(r["mean"]) for r in rows
             if r["experiment"] == "consumer" and r["metric"] == "score"}
    assert set(score) == {("baseline", "v0"), ("baseline", "v1"), ("double", "v0"),
                          ("double", "v1")}
    assert score["baseline", "v1"] == pytest.approx(score["baseline", "v0"] + 1)
    assert all(r["n"] == "3" for r in rows)

    exported = json.loads(ok(cli("metrics", "dag", "--format", "json", cwd=cwd)))
    entry = next(e for e in exported if (e["experiment"], e["condition"], e["metric"])
                 == ("consumer", "double", "score"))
    assert sorted(entry["versions"]) == ["v0", "v1"]
    assert len(entry["versions"]["v1"]["values"]) == 3
    assert entry["versions"]["v1"]["mean"] == pytest.approx(score["double", "v1"])


# -- pictures ---------------------------------------------------------------------------------
def test_report_draws_the_last_runs_timeline_and_metrics(dag: Path) -> None:
    pytest.importorskip("matplotlib")
    cwd = dag.parent
    err = user_mistake(cli("report", "dag", "-o", "report.html", cwd=cwd))
    assert "no run of these experiments yet" in err
    ok(cli("run", "dag", cwd=cwd))

    out = ok(cli("report", "dag", "-o", "report.svg", cwd=cwd))
    assert "9 unit(s) of the last run" in out  # 3 producer + 2 x 3 consumer units
    svg = (cwd / "report.svg").read_text()
    for part in ("timeline of the last run", "worker 1", "seconds since the run started",
                 "producer", "consumer", "producer v0: mean", "consumer v0: score", "baseline",
                 "double"):
        assert part in svg, part

    ok(cli("report", "dag", "-o", "report.html", cwd=cwd))
    page = (cwd / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "http" not in page.split(
        "<svg")[0]  # self-contained: nothing fetched
    assert "<td>consumer</td><td>v0</td><td>double</td><td>score</td><td>3</td>" in page

    ok(cli("report", "dag", "-o", "report.png", cwd=cwd))
    from matplotlib.image import imread

    pixels = imread(cwd / "report.png")
    assert pixels.shape[0] > 400 and pixels.shape[1] > 600
    assert pixels.std() > 0.05  # drawn on, not blank

    # A resumed run executes nothing: the timeline says so, the metrics stay.
    ok(cli("run", "dag", cwd=cwd))
    ok(cli("report", "dag", "-o", "again.svg", cwd=cwd))
    assert "consumer v0: score" in (cwd / "again.svg").read_text()

    err = user_mistake(cli("report", "dag", "-o", "report.pdf", cwd=cwd))
    assert "'.pdf'" in err and ".html, .svg, .png" in err


# -- housekeeping -----------------------------------------------------------------------------
def test_clean_cache_empties_the_step_cache(dag: Path) -> None:
    cwd = dag.parent
    _edit(dag / "producer" / "steps.py", "@pipeline_step()", "@pipeline_step(cacheable=True)")
    ok(cli("run", "dag", cwd=cwd))
    cache = cwd / "data" / ".crystallize_cache"
    assert any(p.suffix == ".pkl" for p in cache.rglob("*"))
    out = " ".join(ok(cli("clean", "dag", "--cache", cwd=cwd)).split())
    assert "removed the step cache data/.crystallize_cache (3 entries)" in out
    assert not cache.exists() and versions(cwd, "producer") == [0]  # versions untouched
    assert "no step cache in data" in ok(cli("clean", "dag", "--cache", cwd=cwd))


def test_graph_names_the_formats_it_knows(dag: Path) -> None:
    cwd = dag.parent
    err = user_mistake(cli("graph", "dag", "-o", "x.foo", cwd=cwd))
    assert "unknown diagram format '.foo'" in err and ".svg, .png, .pdf" in err
    assert not (cwd / "x.foo").exists()
    ok(cli("graph", "dag", "-o", "x.foo", "--format", "dot", cwd=cwd))
    assert (cwd / "x.foo").read_text().startswith("digraph")


def test_list_fits_the_terminal_and_spells_references_as_the_config(dag: Path) -> None:
    # A producer treatment reaches load_numbers' n, and the consumer inherits it.
    terminal_env = {k: v for k, v in _env(TERM="xterm-256color").items() if k != "COLUMNS"}
    _edit(dag / "producer" / "config.yaml", "steps:", "treatments:\n  small: {n: 50}\nsteps:")
    code, out = run_in_terminal([sys.executable, "-m", "crystallize.cli", "list", "dag"],
                                cwd=dag.parent, env=terminal_env, size=(40, 70))
    assert code == 0, out
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out).replace("\r", "")
    assert max(len(line) for line in plain.split("\n")) <= 70, plain
    rows: list[list[str]] = []  # cells wrap onto several lines: join each cell's pieces
    for line in plain.split("\n"):
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if not cells:
            continue
        if cells[0]:
            rows.append(cells)
        else:
            rows[-1] = [a + b for a, b in zip(rows[-1], cells, strict=True)]
    consumer = next(r for r in rows if "consumer" in r[0])
    assert consumer[4] == "producer#summary"  # the output's alias, as the config spells it
    assert consumer[3].replace(" ", "") == "small(fromproducer),double"  # inherited: says so
    assert "…" not in plain  # nothing cut off


def test_new_scaffolds_resume(dag: Path) -> None:
    cwd = dag.parent
    ok(cli("new", "analysis", "--root", "dag", cwd=cwd))
    assert "strategy: resume" in (dag / "analysis" / "config.yaml").read_text()
    assert crystallize.Experiment.from_yaml(dag / "analysis").strategy == "resume"


def test_a_subcommands_bad_flag_prints_its_usage(dag: Path) -> None:
    result = cli("run", "dag", "--bogus", cwd=dag.parent)
    assert result.returncode == 2
    assert "usage: crystallize run" in result.stderr and "--fail-fast" in result.stderr
    assert "unrecognized arguments: --bogus" in result.stderr
    result = cli("metrics", "dag", "--keep", "2", cwd=dag.parent)
    assert result.returncode == 2 and "usage: crystallize metrics" in result.stderr


def test_did_you_mean_for_folders(dag: Path) -> None:
    err = user_mistake(cli("run", "dag/consumr", cwd=dag.parent))
    assert "dag/consumr: this path does not exist" in err
    assert "did you mean 'dag/consumer'?" in err
    err = user_mistake(cli("status", "zzz", cwd=dag.parent))
    assert "did you mean" not in err
