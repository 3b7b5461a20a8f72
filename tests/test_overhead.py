"""Per-run fixed cost (issue 12): a new process parses no step module unchanged since a run."""

from __future__ import annotations

import json
import linecache
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_resume import Project, run

from crystallize import Event, InlineExecutor
from crystallize.fingerprint import _code
from crystallize.store import KNOWN_CODE


@pytest.fixture
def fresh_process(monkeypatch):
    """Forget what this process learnt about code, as a new process would not know it, and
    list the code objects whose source is parsed from then on."""
    parsed: list[str] = []
    own = _code._own_code_fingerprint

    def counted(code):
        parsed.append(code.co_name)
        return own(code)

    def forget() -> list[str]:
        _code._CODE_INFO.clear()
        _code._KNOWN.clear()
        linecache.clearcache()
        parsed.clear()
        return parsed

    monkeypatch.setattr(_code, "_own_code_fingerprint", counted)
    return forget


def test_a_new_process_parses_no_unchanged_step_module(tmp_path, fresh_process):
    p = Project(tmp_path)
    run(p)
    kept = json.loads((tmp_path / "data" / KNOWN_CODE).read_text())
    assert str(p.path) in kept["files"]
    parsed = fresh_process()
    res = run(p)
    assert res["producer"].resumed and res["consumer"].resumed
    assert parsed == []


def test_a_resume_that_learns_nothing_writes_nothing(tmp_path, fresh_process):
    p = Project(tmp_path)
    run(p)
    kept = (tmp_path / "data" / KNOWN_CODE).stat()
    fresh_process()
    assert run(p)["producer"].resumed
    again = (tmp_path / "data" / KNOWN_CODE).stat()
    assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)


def test_code_edited_without_changing_size_or_mtime_is_not_taken_from_the_cache(
    tmp_path, fresh_process
):
    p = Project(tmp_path)
    run(p)
    before = p.path.stat()
    p.edit("sum(data) * factor})", "sum(data) + factor})")
    os.utime(p.path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = p.path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    parsed = fresh_process()
    res = run(p)
    assert "code of step ProduceStep changed" in res["producer"].reason
    assert "produce" in parsed
    assert res["consumer"].metrics.baseline.metrics["seen"] == [7, 7]


@pytest.mark.parametrize("content", [
    b"{not json",
    b'{"schema": "another", "files": {}}',
    json.dumps({"schema": _code._KNOWN_SCHEMA, "files": {"x.py": 3}}).encode(),
])
def test_a_torn_or_foreign_cache_file_is_recomputed_and_replaced(
    tmp_path, fresh_process, content
):
    p = Project(tmp_path)
    run(p)
    (tmp_path / "data" / KNOWN_CODE).write_bytes(content)
    parsed = fresh_process()
    res = run(p)
    assert res["producer"].resumed and "produce" in parsed
    kept = json.loads((tmp_path / "data" / KNOWN_CODE).read_text())
    assert str(p.path) in kept["files"]


def test_forged_entries_of_another_file_identity_are_ignored(tmp_path, fresh_process):
    p = Project(tmp_path)
    run(p)
    path = Path(tmp_path / "data" / KNOWN_CODE)
    kept = json.loads(path.read_text())
    entry = kept["files"][str(p.path)]
    entry["mtime_ns"] += 1
    for facts in entry["codes"].values():
        facts["own"] = "0" * 64
    path.write_text(json.dumps(kept))
    parsed = fresh_process()
    res = run(p)
    assert res["producer"].resumed and "produce" in parsed


class CountingExecutor(InlineExecutor):
    """Inline, counting how often a run enters it (a pool would be started there)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = 0

    async def __aenter__(self) -> CountingExecutor:
        self.entered += 1
        return self


def test_a_resume_where_nothing_changed_needs_no_executor_and_announces_each_node_once(
    tmp_path,
):
    p = Project(tmp_path)
    executor = CountingExecutor()
    assert not run(p, executor=executor)["producer"].resumed
    assert executor.entered == 1 and len(p.calls()) == 4
    events: list[Event] = []
    res = p.graph().run(strategy="resume", executor=executor, on_event=events.append)
    assert res["producer"].resumed and res["consumer"].resumed and p.calls() == []
    assert executor.entered == 1  # not entered again: nothing ran
    assert [(e.kind, e.experiment) for e in events] == [
        ("decision", "producer"), ("resumed", "producer"),
        ("decision", "consumer"), ("resumed", "consumer"),
    ]


def test_a_resume_that_reruns_part_of_the_graph_announces_the_reused_part_once(tmp_path):
    p = Project(tmp_path)
    executor = CountingExecutor()
    run(p, executor=executor)
    assert len(p.calls()) == 4
    p.edit('"seen": json.loads(data)["value"]', '"seen": json.loads(data)["value"] + 1')
    events: list[Event] = []
    res = p.graph().run(strategy="resume", executor=executor, on_event=events.append)
    assert res["producer"].resumed and res["consumer"].executed
    assert sorted(p.calls()) == ["consume baseline 0", "consume baseline 1"]
    assert executor.entered == 2
    kinds = [(e.kind, e.experiment) for e in events if e.kind != "unit_finished"]
    assert kinds == [
        ("decision", "producer"), ("resumed", "producer"),
        ("decision", "consumer"), ("started", "consumer"), ("finished", "consumer"),
    ]
    assert "changed (consume)" in res["consumer"].reason


SCRIPT = '''
import sys
from crystallize import Artifact, Experiment, ExperimentGraph, data_source, pipeline_step

@data_source
def numbers(ctx):
    return [1, 2, 3]

@pipeline_step()
def total(data, ctx, out: Artifact):
    out.write(str(sum(data)).encode())
    return data, {"total": sum(data)}

@pipeline_step()
def double(data, ctx):
    return data, {"double": 2 * int(data)}

out = Artifact("total.txt")
graph = ExperimentGraph(
    Experiment(numbers(), [total(out=out)], name="producer", outputs=[out], replicates=2),
    Experiment(out, [double()], name="consumer", replicates=2),
)
results = graph.run(strategy="resume", executor=sys.argv[1])
print(all(r.resumed for r in results.values()), results["consumer"].metrics.baseline.metrics)
print("anyio._backends._asyncio" in sys.modules)
'''


def test_a_resume_where_nothing_changed_starts_no_event_loop_in_a_new_process(tmp_path):
    script = tmp_path / "graph.py"
    script.write_text(SCRIPT)

    def run_script() -> list[str]:
        done = subprocess.run([sys.executable, str(script), "process"], cwd=tmp_path,
                              capture_output=True, text=True, check=True)
        return done.stdout.splitlines()

    # A run that computes needs its event loop; a resume where nothing changed starts none.
    assert run_script() == ["False {'double': [12, 12]}", "True"]
    assert run_script() == ["True {'double': [12, 12]}", "False"]


def test_import_crystallize_loads_only_what_building_and_running_experiments_need():
    code = "import sys, crystallize; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    loaded = set(done.stdout.split())
    # YAML is for folder configs; the rest for the command line, the UI, reports, plots, Dask.
    for module in ("yaml", "crystallize.config", "crystallize.cli", "crystallize.ui",
                   "crystallize.render", "rich", "textual", "graphviz", "matplotlib", "numpy",
                   "dask", "distributed", "statistics", "difflib"):
        assert module not in loaded, module
