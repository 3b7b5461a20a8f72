"""Resume incremental to the unit (SPEC §4.1, §6): per-unit reuse, early cutoff, replicate
mapping, interrupted runs that keep what they finished, and a reason for every decision.

Each step appends a line to a log file, so the tests count exactly which units ran.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import crystallize
from crystallize import LoggingPlugin
from crystallize.store import ExperimentStore

MODULE = '''
import json, os, signal
from crystallize import Artifact, Experiment, ExperimentGraph, data_source, pipeline_step

LOG = {log!r}

def note(what):
    with open(LOG, "a") as f:
        f.write(what + "\\n")

def crash_point():
    """Stop the run at the N-th unit (CRASH_AT): every unit before it has finished."""
    at = int(os.environ.get("CRASH_AT", "0"))
    done = len(open(LOG).read().splitlines()) if os.path.exists(LOG) else 0
    if at and done + 1 == at:
        if os.environ.get("CRASH_HOW") == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise KeyboardInterrupt

@data_source
def numbers(ctx):
    return [1, 2, 3]

@pipeline_step()
def produce(data, ctx, out: Artifact, offset=0):
    crash_point()
    if os.path.exists(LOG + ".fail") and ctx["replicate"] == 1:
        raise RuntimeError("flaky")
    value = sum(data) + offset + ctx["replicate"]
    note(f"produce {{ctx['condition']}} {{ctx['replicate']}}")
    out.write(json.dumps({{"value": value}}))
    return data, {{"value": value}}

@pipeline_step()
def consume(data, ctx):
    crash_point()
    note(f"consume {{ctx['condition']}} {{ctx['replicate']}}")
    return data, {{"seen": json.loads(data)["value"]}}

def graph(producer_replicates, consumer_replicates, plugins=()):
    out = Artifact("out.json")
    producer = Experiment(numbers(), [produce(out=out)], name="producer", outputs=[out],
                          replicates=producer_replicates, strategy="resume")
    consumer = Experiment(out, [consume()], name="consumer", replicates=consumer_replicates,
                          strategy="resume", plugins=list(plugins))
    return ExperimentGraph(producer, consumer)

if __name__ == "__main__":
    import sys
    graph(int(sys.argv[1]), int(sys.argv[2])).run(executor=sys.argv[3])
'''


class Project:
    """The steps module on disk, re-imported after each edit like a user's edited file."""

    def __init__(self, root: Path) -> None:
        self.log = root / "calls.log"
        self.path = root / "incremental_mod.py"
        self.path.write_text(MODULE.format(log=str(self.log)))

    def edit(self, old: str, new: str) -> None:
        text = self.path.read_text()
        assert old in text
        self.path.write_text(text.replace(old, new))

    def graph(self, producer_replicates: int, consumer_replicates: int, plugins=()):
        name = f"incremental_mod_{uuid.uuid4().hex}"
        spec = importlib.util.spec_from_file_location(name, self.path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod.graph(producer_replicates, consumer_replicates, plugins)

    def run(self, producer_replicates: int, consumer_replicates: int, **kw):
        graph = self.graph(producer_replicates, consumer_replicates, kw.pop("plugins", ()))
        return graph.run(executor=kw.pop("executor", "inline"), **kw)

    def calls(self) -> list[str]:
        """The units that ran since the last call, sorted."""
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        self.log.unlink()
        return sorted(lines)


def units(step: str, *replicates: int, condition: str = "baseline") -> list[str]:
    return sorted(f"{step} {condition} {r}" for r in replicates)


def test_only_the_failed_unit_reruns_into_one_consistent_version(tmp_path):
    p = Project(tmp_path)
    (tmp_path / "calls.log.fail").touch()
    first = p.run(3, 3)
    assert list(first["producer"].errors) == ["baseline_rep_1"]
    assert list(first["consumer"].errors) == ["baseline_rep_1"]  # it had nothing to read
    assert p.calls() == sorted(units("produce", 0, 2) + units("consume", 0, 2))
    (tmp_path / "calls.log.fail").unlink()

    res = p.run(3, 3)
    assert p.calls() == sorted(units("consume", 1) + units("produce", 1))
    prod, cons = res["producer"], res["consumer"]
    assert prod.executed and prod.version == 1
    assert prod.metrics.baseline.metrics["value"] == [6, 7, 8]
    assert cons.metrics.baseline.metrics["seen"] == [6, 7, 8]
    assert "failed in v0" in prod.unit_reasons["baseline_rep_1"]
    assert "reused from v0" in prod.unit_reasons["baseline_rep_0"]
    # the new version carries every unit's output, so its consumers read one consistent set
    for r in range(3):
        path = prod.artifact_path("out.json", "baseline", r)
        assert path.is_relative_to(prod.version_dir) and path.exists()
        assert json.loads(path.read_text()) == {"value": 6 + r}
    again = p.run(3, 3)
    assert p.calls() == [] and again["producer"].resumed and again["consumer"].resumed


def test_early_cutoff_identical_artifacts_leave_consumers_reused(tmp_path):
    p = Project(tmp_path)
    p.run(3, 3)
    p.calls()
    # a real code change whose artifacts come out byte-identical
    p.edit('value = sum(data) + offset + ctx["replicate"]',
           'value = ctx["replicate"] + offset + sum(data)')
    res = p.run(3, 3)
    assert p.calls() == units("produce", 0, 1, 2)
    assert "code of step ProduceStep changed" in res["producer"].reason
    cons = res["consumer"]
    assert cons.resumed and "unchanged" in cons.reason
    assert cons.metrics.baseline.metrics["seen"] == [6, 7, 8]

    # a change that alters only replicate 2's artifact reruns only consumer replicate 2
    p.edit('value = ctx["replicate"] + offset + sum(data)',
           'value = ctx["replicate"] + offset + sum(data) + (ctx["replicate"] == 2)')
    res = p.run(3, 3)
    assert p.calls() == sorted(units("consume", 2) + units("produce", 0, 1, 2))
    cons = res["consumer"]
    assert cons.executed and cons.metrics.baseline.metrics["seen"] == [6, 7, 9]
    assert "upstream producer produced new artifacts" in cons.unit_reasons["baseline_rep_2"]
    assert "reused" in cons.unit_reasons["baseline_rep_0"]


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_producer_four_to_five_replicates_reruns_only_changed_consumer_replicates(
        tmp_path, executor):
    p = Project(tmp_path)
    p.run(4, 10, executor=executor)
    assert len(p.calls()) == 14

    res = p.run(5, 10, executor=executor)
    # consumer replicate i reads producer replicate i % n: only i in 4..9 changed source
    assert p.calls() == sorted(units("consume", 4, 5, 6, 7, 8, 9) + units("produce", 4))
    assert res["consumer"].metrics.baseline.metrics["seen"] == [6 + i % 5 for i in range(10)]
    assert "new replicate" in res["producer"].unit_reasons["baseline_rep_4"]

    res = p.run(5, 12)  # more consumer replicates: only the new ones run
    assert p.calls() == units("consume", 10, 11)
    assert res["consumer"].metrics.baseline.metrics["seen"] == [6 + i % 5 for i in range(12)]

    res = p.run(5, 6)  # fewer: a subset of the stored ones, nothing runs
    assert p.calls() == []
    assert res["consumer"].resumed
    assert res["consumer"].metrics.baseline.metrics["seen"] == [6 + i % 5 for i in range(6)]


def test_ctrl_c_half_way_keeps_the_finished_units(tmp_path, monkeypatch):
    p = Project(tmp_path)
    monkeypatch.setenv("CRASH_AT", "7")  # 4 producer units and 2 consumer units finish
    with pytest.raises(KeyboardInterrupt):
        p.run(4, 4)
    assert p.calls() == sorted(units("consume", 0, 1) + units("produce", 0, 1, 2, 3))
    store = ExperimentStore(tmp_path / "data", "consumer")
    assert store.newest_complete() is None  # nothing half-done is marked complete
    monkeypatch.delenv("CRASH_AT")

    res = p.run(4, 4)
    assert p.calls() == units("consume", 2, 3)
    cons = res["consumer"]
    assert cons.metrics.baseline.metrics["seen"] == [6, 7, 8, 9]
    assert "interrupted" in cons.unit_reasons["baseline_rep_0"]
    assert cons.unit_reasons["baseline_rep_3"] == "no complete run in the store"


def test_a_torn_or_tampered_journal_line_is_rerun_never_followed(tmp_path, monkeypatch):
    p = Project(tmp_path)
    monkeypatch.setenv("CRASH_AT", "7")
    with pytest.raises(KeyboardInterrupt):
        p.run(4, 4)
    p.calls()
    monkeypatch.delenv("CRASH_AT")
    (tmp_path / "secret").write_text("not yours")
    journal = tmp_path / "data" / "consumer" / "v0" / "units.jsonl"
    lines = journal.read_text().splitlines()
    assert len(lines) == 3  # the header, then units 0 and 1
    # later lines for units 0 and 1 that would win over the good ones, were they trusted
    escape = dict(json.loads(lines[2]), artifacts={"x": "../../../secret"})
    garbled = dict(json.loads(lines[1]), reads="zzz")
    with journal.open("a") as f:
        f.write(json.dumps(escape) + "\n" + json.dumps(garbled) + "\n" + '{"condition": "ba')

    res = p.run(4, 4)
    assert p.calls() == units("consume", 2, 3)
    cons = res["consumer"]
    assert cons.metrics.baseline.metrics["seen"] == [6, 7, 8, 9]
    assert "x" not in cons.artifacts  # no path outside the version is taken over


def test_sigkill_half_way_then_resume_runs_only_the_unfinished_units(tmp_path):
    p = Project(tmp_path)
    env = {**os.environ, "CRASH_AT": "7", "CRASH_HOW": "kill",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(p.path), "4", "4", "inline"]
    killed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert p.calls() == sorted(units("consume", 0, 1) + units("produce", 0, 1, 2, 3))
    assert ExperimentStore(tmp_path / "data", "consumer").newest_complete() is None

    del env["CRASH_AT"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert p.calls() == units("consume", 2, 3)
    res = p.run(4, 4)
    assert p.calls() == [] and res["consumer"].resumed
    assert res["consumer"].metrics.baseline.metrics["seen"] == [6, 7, 8, 9]


def test_every_decision_has_a_reason_in_events_result_and_verbose_log(tmp_path, caplog):
    p = Project(tmp_path)
    p.run(4, 6)
    p.calls()
    events = []
    with caplog.at_level("INFO", logger="crystallize"):
        res = p.run(5, 6, plugins=[LoggingPlugin(verbose=True)], on_event=events.append)
    assert p.calls() == sorted(units("consume", 4, 5) + units("produce", 4))
    cons = res["consumer"]
    assert "2 of 6 unit(s) run" in cons.reason
    assert set(cons.unit_reasons) == {f"baseline_rep_{r}" for r in range(6)}
    assert "upstream producer produced new artifacts" in cons.unit_reasons["baseline_rep_5"]
    assert "reused from v0" in cons.unit_reasons["baseline_rep_1"]
    per_unit = {(e.condition, e.replicate): e.reason for e in events
                if e.kind == "decision" and e.experiment == "consumer" and e.replicate is not None}
    assert per_unit == {("baseline", r): cons.unit_reasons[f"baseline_rep_{r}"] for r in range(6)}
    assert "consumer [baseline rep 4]: upstream producer produced new artifacts" in caplog.text
    assert "consumer [baseline rep 0]: reused from v0" in caplog.text


def test_uniform_decision_is_one_event_not_one_per_unit(tmp_path):
    p = Project(tmp_path)
    p.run(2, 2)
    events = []
    p.run(2, 2, on_event=events.append)
    decisions = [e for e in events if e.kind == "decision"]
    assert [(e.experiment, e.replicate) for e in decisions] == [("producer", None),
                                                               ("consumer", None)]
    assert all("nothing changed" in e.reason for e in decisions)


# -- crystallize run --dry-run ----------------------------------------------------------------
REPO = Path(crystallize.__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> str:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "crystallize.cli", *args], cwd=cwd, capture_output=True,
        text=True, timeout=120, env={**os.environ, "PYTHONPATH": path, "COLUMNS": "250"},
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    return done.stdout


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(f.relative_to(root)): (f.stat().st_mtime_ns, f.stat().st_size)
            for f in root.rglob("*")}


def test_dry_run_shows_what_would_run_and_why_and_touches_nothing(tmp_path):
    dag = tmp_path / "dag"
    shutil.copytree(REPO / "examples" / "dag", dag)
    log = tmp_path / "calls.log"
    for folder, fn in (("producer", "produce_summary"), ("consumer", "inspect_summary")):
        steps = dag / folder / "steps.py"
        text = steps.read_text()
        body = '"""\n'
        head, _, tail = text.partition(body)  # after the step's docstring
        head2, _, tail2 = tail.partition(body)
        note = (f'    open({str(log)!r}, "a").write(f"{fn} {{ctx[\'condition\']}} '
                f'{{ctx[\'replicate\']}}\\n")\n')
        steps.write_text(head + body + head2 + body + note + tail2)
    consumer_config = dag / "consumer" / "config.yaml"
    consumer_config.write_text(consumer_config.read_text().replace("replicates: 3",
                                                                   "replicates: 6"))

    def calls() -> list[str]:
        lines = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return sorted(lines)

    out = cli("run", "--dry-run", "dag", cwd=tmp_path)
    assert re.search(r"producer\W+3\W+0\W.*no complete run", out), out
    assert not (tmp_path / "data").exists() and calls() == []

    cli("run", "dag", cwd=tmp_path)
    assert len(calls()) == 3 + 12
    producer_config = dag / "producer" / "config.yaml"
    producer_config.write_text(producer_config.read_text().replace("replicates: 3",
                                                                   "replicates: 4"))
    before = _snapshot(tmp_path / "data")
    out = cli("run", "--dry-run", "dag", cwd=tmp_path)
    assert _snapshot(tmp_path / "data") == before and calls() == []
    assert re.search(r"producer\W+1\W+3\W", out), out
    assert re.search(r"consumer\W+6\W+6\W", out), out
    assert "new replicate" in out and "upstream producer" in out
    assert "double rep 3" in out  # per unit where the reason differs from the experiment's

    cli("run", "dag", cwd=tmp_path)  # the real run does what the dry run said
    assert calls() == sorted(["produce_summary baseline 3"] + [
        f"inspect_summary {c} {r}" for c in ("baseline", "double") for r in (3, 4, 5)])
    out = cli("run", "--dry-run", "dag", cwd=tmp_path)
    assert re.search(r"consumer\W+0\W+12\W.*nothing changed", out), out


def test_units_taken_from_a_journal_keep_the_timing_of_the_run_that_computed_them(
        tmp_path, monkeypatch):
    p = Project(tmp_path)
    monkeypatch.setenv("CRASH_AT", "7")
    with pytest.raises(KeyboardInterrupt):
        p.run(4, 4)
    monkeypatch.delenv("CRASH_AT")
    resumed_at = time.time()
    p.run(4, 4)
    stored = ExperimentStore(tmp_path / "data", "consumer").newest_complete()
    assert stored is not None
    timings = [u.timing for u in stored.condition_record("baseline").units]
    assert all(t is not None for t in timings)
    started = [t.started for t in timings if t is not None]
    # units 0 and 1 finished before the interruption; 2 and 3 ran in the resumed run
    assert max(started[:2]) < resumed_at <= min(started[2:])


def test_a_journaled_unit_keeps_its_warnings_for_the_version_that_reuses_it(tmp_path):
    # A unit read its producer's baseline in place of a missing condition: taken over from
    # an interrupted run's journal, it must still say so (SPEC §8), as a stored record does.
    from crystallize.running._resume import Plan, Source
    from crystallize.store import Journal, LeaseBook, UnitRecord

    said = "consumer [t]: producer v0 has no condition 't'; read its baseline's out.json instead"
    book = LeaseBook(tmp_path)
    try:
        writer = ExperimentStore(tmp_path, "consumer").allocate(book)
        writer.journal({"fingerprint": {}}, [("t", UnitRecord(0, "complete", 1), [said]),
                                             ("t", UnitRecord(1, "complete", 2), [])])
        journal = Journal.read(writer.number, writer.path)
    finally:
        book.close()
    assert journal is not None
    source = Source.of_journal(journal)
    plan = Plan(2, reuse={("t", r): (source, journal.units["t"][r]) for r in (0, 1)})
    assert plan.warnings("t") == [said]
    assert plan.warnings("baseline") == []
