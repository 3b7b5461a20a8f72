"""The ``crystallize`` command line, run as a real subprocess on a copy of ``examples/dag``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import crystallize

from processes import is_alive
from terminal import run_in_terminal

REPO = Path(crystallize.__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crystallize.cli", *args], cwd=cwd, env=_env(),
        capture_output=True, text=True, timeout=120,
    )


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200", **extra}


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def user_mistake(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.split())  # rich wraps long lines


@pytest.fixture
def dag(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "examples" / "dag", tmp_path / "dag")
    return tmp_path / "dag"


def test_no_arguments_prints_help(tmp_path: Path) -> None:
    out = ok(cli(cwd=tmp_path))
    assert "usage: crystallize" in out
    for command in ("run", "status", "graph", "list", "new", "clean", "ui"):
        assert command in out


def test_run_status_and_clean(dag: Path, tmp_path: Path) -> None:
    config = dag / "consumer" / "config.yaml"
    config.write_text(config.read_text() + "plugins:\n  - ArtifactPlugin: {versioned: true}\n")

    out = ok(cli("run", "dag", cwd=tmp_path))
    for text in ("producer", "consumer", "score", "double", "±",
                 "hypothesis doubling_changes_score"):
        assert text in out
    assert (tmp_path / "data" / "consumer" / "v0" / "metadata.json").exists()

    out = ok(cli("status", "dag", cwd=tmp_path))
    assert out.count("complete") == 2 and "v0" in out

    steps = dag / "consumer" / "steps.py"
    steps.write_text(steps.read_text().replace("rng.gauss(0.0, 0.1)", "rng.gauss(0.0, 0.2)"))
    out = ok(cli("status", "dag", cwd=tmp_path))
    consumer_line = next(line for line in out.splitlines() if "consumer" in line)
    assert "stale" in consumer_line and "code of step" in consumer_line
    assert "complete" in next(line for line in out.splitlines() if "producer" in line)

    out = ok(cli("run", "dag/consumer", cwd=tmp_path))  # strategy: resume in the configs
    assert "producer: reusing v0" in out
    assert (tmp_path / "data" / "consumer" / "v1").exists()
    assert (tmp_path / "data" / "consumer" / "v0").exists()  # versioned: kept

    out = ok(cli("clean", "dag", "--keep", "1", cwd=tmp_path))
    assert "v0" in out
    assert not (tmp_path / "data" / "consumer" / "v0").exists()
    assert (tmp_path / "data" / "consumer" / "v1").exists()


def test_run_options(dag: Path, tmp_path: Path) -> None:
    out = ok(cli(
        "run", "dag/consumer/config.yaml", "--treatment", "double", "--replicates", "2",
        "--workers", "1", "--executor", "thread", "--strategy", "rerun", cwd=tmp_path,
    ))
    assert "consumer (executed -> v0, 2 replicate(s))" in out
    assert "double" in out


def test_list_and_graph(dag: Path, tmp_path: Path) -> None:
    out = ok(cli("list", "dag", cwd=tmp_path))
    # as the config spells the reference: the output's alias, not its file name
    assert "producer" in out and "consumer" in out and "producer#summary " in out

    out = ok(cli("graph", "dag", "-o", "graph.svg", cwd=tmp_path))
    assert "graph.svg" in out
    svg = (tmp_path / "graph.svg").read_text()
    assert "<svg" in svg and "producer" in svg and "consumer" in svg


def test_new_scaffolds_a_consumer_that_runs(dag: Path, tmp_path: Path) -> None:
    out = ok(cli("new", "analysis", "--root", "dag", "--use", "producer#summary",
                 "--output", "report", cwd=tmp_path))
    folder = dag / "analysis"
    assert "dag/analysis/config.yaml" in out
    config = (folder / "config.yaml").read_text()
    assert "datasource:" in config and "producer_summary: producer#summary" in config
    assert (folder / "outputs.py").exists() and (folder / "steps.py").exists()

    out = ok(cli("run", "dag/analysis", cwd=tmp_path))
    assert "analysis (executed -> v0, 3 replicate(s))" in out
    assert (tmp_path / "data" / "analysis" / "v0"
            / "baseline~r0~Example_StepStep~report.json").exists()

    err = user_mistake(cli("new", "other", "--root", "dag", "--use", "producr#summary",
                           cwd=tmp_path))
    assert "producr" in err and "did you mean 'producer'" in err
    assert not (dag / "other").exists()


def test_user_mistakes_exit_2_without_traceback(dag: Path, tmp_path: Path) -> None:
    config = dag / "consumer" / "config.yaml"
    config.write_text(config.read_text().replace("replicates: 3", "replicates: three"))
    err = user_mistake(cli("run", "dag", cwd=tmp_path))
    assert "dag/consumer/config.yaml" in err and "replicates" in err and "replicates: 3" in err
    assert not (tmp_path / "data").exists()

    err = user_mistake(cli("status", "nowhere", cwd=tmp_path))
    assert "nowhere" in err and "does not exist" in err

    err = user_mistake(cli("run", "dag/producer", "--treatment", "duble", cwd=tmp_path))
    assert "--treatment duble" in err

    (tmp_path / "a_file").write_text("")
    err = user_mistake(cli("new", "other", "--root", "a_file", cwd=tmp_path))
    assert "cannot create a_file/other" in err and "--root" in err

    err = user_mistake(cli("ui", "dag/producer/config.yaml", cwd=tmp_path))
    assert "not a folder" in err and "dag/producer/config.yaml" in err


def test_failed_experiment_exits_1_and_says_why(dag: Path, tmp_path: Path) -> None:
    steps = dag / "consumer" / "steps.py"
    steps.write_text(steps.read_text().replace(
        '    summary = data["producer_summary"]\n',
        '    summary = data["producer_summary"]\n    raise ValueError("boom")\n',
    ))
    result = cli("run", "dag", "--executor", "inline", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    # the only traceback is the failed unit's own (--tb), below the failure, not crystallize's
    assert "Traceback" not in result.stderr
    assert result.stdout.count("Traceback") == 1
    assert result.stdout.index("failed units:") < result.stdout.index("Traceback")
    out = " ".join(result.stdout.split())
    assert "1 experiment(s) failed" in out and "consumer" in out and "boom" in out


def test_run_in_a_terminal_draws_progress_bars(dag: Path, tmp_path: Path) -> None:
    code, out = run_in_terminal([sys.executable, "-m", "crystallize.cli", "run", "dag"],
                                cwd=tmp_path, env=_env(TERM="xterm-256color"))
    assert code == 0, out
    assert "\x1b[" in out  # a live, styled display
    assert "━" in out  # the bars
    assert "6/6" in out and "done -> v0" in out  # consumer: 2 conditions x 3 replicates


def test_ctrl_c_stops_the_run_and_its_workers(dag: Path, tmp_path: Path) -> None:
    started = tmp_path / "started"
    steps = dag / "producer" / "steps.py"
    steps.write_text(steps.read_text().replace(
        '    stats = {"mean"',
        f'    import os, time\n    open({str(started)!r}, "a").write(f"{{os.getpid()}}\\n")\n'
        '    end = time.monotonic() + 60\n    while time.monotonic() < end:\n        pass\n'
        '    stats = {"mean"', 1))
    proc = subprocess.Popen(
        [sys.executable, "-m", "crystallize.cli", "run", "dag"], cwd=tmp_path, env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
            not started.exists() or len(started.read_text().split()) < 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "interrupted" in err and "Traceback" not in err + out
    workers = [int(p) for p in started.read_text().split()]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(is_alive(p) for p in workers):
        time.sleep(0.05)
    assert not any(is_alive(p) for p in workers), "a worker outlived the interrupted run"
    assert not list((tmp_path / "data").rglob(".crystallize_complete"))

