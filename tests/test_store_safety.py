"""The store under attack and neglect: reads run no code, nothing untrusted is trusted, names and
links cannot make it write or delete elsewhere, and it cleans up after itself (issue 10)."""

from __future__ import annotations

import base64
import contextlib
import fractions
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_cli import cli, ok, user_mistake

from crystallize import Artifact, Experiment, ExperimentGraph, Treatment, data_source, pipeline_step
from crystallize.errors import ExperimentFailedError, InvalidNameError
from crystallize.running import experiment_status

from processes import is_alive

OUT = Artifact("out.json", loader=lambda p: json.loads(p.read_text()),
               writer=lambda obj: json.dumps(obj))


@data_source
def numbers(ctx):
    return [1, 2, 3]


@pipeline_step()
def measure(data, ctx, out: Artifact, offset=0):
    # Each unit logs itself, and fails where fail.txt names it.
    with open("calls.log", "a") as log:
        log.write(f"{ctx['condition']}:{ctx['replicate']}\n")
    fail = Path("fail.txt")
    if fail.exists() and f"{ctx['condition']}:{ctx['replicate']}" in fail.read_text().split():
        raise RuntimeError("planned failure")
    out.write({"total": sum(data) + offset, "replicate": ctx["replicate"]})
    return data, {"total": sum(data) + offset, "ratio": fractions.Fraction(1, 3)}


def experiment(offset: int = 0, strategy: str = "rerun") -> Experiment:
    return Experiment(numbers(), [measure(out=OUT, offset=offset)], name="solo", replicates=3,
                      outputs=[OUT], strategy=strategy)


def calls() -> list[str]:
    log = Path("calls.log")
    lines = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def versions(root: Path = Path("data/solo")) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


FOLDER = """\
name: solo
replicates: 2
{strategy}datasource: numbers
steps:
  - measure
"""


def folder_experiment(root: Path, strategy: str = "strategy: resume\n") -> Path:
    folder = root / "exps" / "solo"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(FOLDER.format(strategy=strategy))
    (folder / "datasources.py").write_text(textwrap.dedent("""\
        from crystallize import data_source

        @data_source
        def numbers(ctx):
            return [1, 2, 3]
    """))
    (folder / "steps.py").write_text(textwrap.dedent("""\
        import fractions
        from crystallize import pipeline_step

        @pipeline_step()
        def measure(data, ctx):
            return data, {"total": sum(data), "ratio": fractions.Fraction(1, 3)}
    """))
    return folder


# -- 1. reading never unpickles ----------------------------------------------------------------
class _Payload:
    """Unpickling it creates a directory: proof that a read ran code."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_reading_the_store_never_unpickles_a_planted_payload(tmp_path):
    folder_experiment(tmp_path)
    ok(cli("run", "exps", cwd=tmp_path))
    v0 = tmp_path / "data" / "solo" / "v0"
    proof = tmp_path / "payload-ran"
    payload = pickle.dumps(_Payload(str(proof)))
    b64 = base64.b64encode(payload).decode()
    # In every shape a reader might decode: the old inline pickle tag, the side-file form, and
    # the side file itself swapped for the payload.
    meta = json.loads((v0 / "metadata.json").read_text())
    meta["planted"] = {"__crystallize_pickle__": b64}
    results = meta["conditions"]["baseline"]
    results["metrics"]["planted"] = [{"__crystallize_pickle__": b64}] * 2
    results["recorded"]["planted"] = [True, True]
    (v0 / "metadata.json").write_text(json.dumps(meta))
    for side in v0.glob("*.pkl"):
        side.write_bytes(payload)

    status = cli("status", "exps", cwd=tmp_path)
    assert not proof.exists()
    assert "stale" in ok(status) and "metadata.json" in status.stdout  # the edit is seen, and said
    ok(cli("list", "exps", cwd=tmp_path))
    ok(cli("clean", "exps", "--keep", "3", cwd=tmp_path))
    experiment_status(ExperimentGraph.from_yaml(tmp_path / "exps"))
    assert not proof.exists()
    # A resume reruns what it cannot trust rather than load it.
    result = ExperimentGraph.from_yaml(tmp_path / "exps").run(strategy="resume",
                                                                executor="inline")
    assert result["solo"].executed and not proof.exists()


# -- 2. names cannot escape the store ----------------------------------------------------------
def test_names_that_would_escape_the_store_are_refused_before_anything_runs(tmp_path):
    def escape(data, ctx):
        Path("ran").touch()
        return data

    escape.__name__ = "../../escaped"
    with pytest.raises(InvalidNameError, match="path separator") as err:
        Experiment(numbers(), [pipeline_step()(escape)()], name="evil")
    assert "../../escaped" in str(err.value) and isinstance(err.value, ValueError)
    for bad in ("a\0b", "..\\up", "x/y"):
        with pytest.raises(ValueError):
            Treatment(bad, {"offset": 1})
    for bad in ("a\0b", "sub/dir", ".hidden"):
        with pytest.raises(ValueError):
            Experiment(numbers(), [measure(out=OUT)], outputs=[OUT], name=bad)
    with pytest.raises(InvalidNameError):
        Artifact("..\\out.json")
    Artifact("results.json")  # a file of a step's own folder may take a name the store uses
    assert not Path("ran").exists() and not list(tmp_path.parent.glob("escaped*"))


# -- 3. no deleting through links --------------------------------------------------------------
def test_pruning_never_deletes_or_marks_through_symlinks(tmp_path):
    decoy = tmp_path / "decoy"
    (decoy / "leases").mkdir(parents=True)
    for name in ("notes.txt", "notes.lock"):  # shaped like a dead run's lease
        (decoy / "leases" / name).write_text("keep me")
    Path("data").mkdir()
    os.symlink(decoy / "leases", "data/.leases")
    with pytest.warns(UserWarning, match="symbolic link"):
        experiment().run(executor="inline")
        experiment(offset=1).run(executor="inline")  # prunes v0
    assert sorted(p.name for p in (decoy / "leases").iterdir()) == ["notes.lock", "notes.txt"]
    assert versions() == ["v1"]

    # A version folder that is a link: its target gets no .doomed and keeps its files.
    shutil.move("data/solo/v1", decoy / "v1")
    os.symlink(decoy / "v1", "data/solo/v1")
    before = sorted(str(p.relative_to(decoy)) for p in (decoy / "v1").rglob("*"))
    with pytest.warns(UserWarning, match="symbolic link"):
        experiment(offset=2).run(executor="inline")
    assert sorted(str(p.relative_to(decoy)) for p in (decoy / "v1").rglob("*")) == before
    assert not (decoy / "v1" / ".doomed").exists()

    # The experiment folder itself a link: the run may write through it, never delete.
    shutil.move("data/solo", decoy / "solo")
    os.symlink(decoy / "solo", "data/solo")
    with pytest.warns(UserWarning, match="symbolic link"):
        experiment(offset=3).run(executor="inline")
    assert {"v1", "v2"} <= set(versions(decoy / "solo"))


def test_clean_skips_links_and_says_so(tmp_path):
    folder_experiment(tmp_path)
    ok(cli("run", "exps", cwd=tmp_path))
    decoy = tmp_path / "decoy"
    shutil.move(tmp_path / "data" / "solo", decoy)
    os.symlink(decoy, tmp_path / "data" / "solo")
    out = ok(cli("clean", "exps", "--all", cwd=tmp_path))
    assert "symbolic link" in " ".join(out.split())
    assert (decoy / "v0" / "metadata.json").exists()


# -- 4. resume returns exactly what the run returned -------------------------------------------
@pipeline_step()
def shapes(data, ctx):
    return data, {"pair": (1, "a"), "by_id": {1: "one", 2.5: ("x",), None: {3}},
                  "nested": [(1, 2), {"k": (3,)}], "raw": b"\x00\x01", "big": float("inf")}


def test_resume_restores_tuples_int_keys_and_refuses_what_it_cannot_store():
    def build():
        return Experiment(numbers(), [shapes()], name="shapes", replicates=2)

    first = build().run(executor="inline")
    again = build().run(executor="inline", strategy="resume")
    assert again.resumed
    assert again.metrics.baseline.metrics == first.metrics.baseline.metrics
    value = again.metrics.baseline.metrics
    assert value["pair"][0] == (1, "a") and type(value["pair"][0]) is tuple
    assert value["by_id"][0] == {1: "one", 2.5: ("x",), None: {3}}
    assert value["nested"][0] == [(1, 2), {"k": (3,)}] and value["raw"][0] == b"\x00\x01"

    @pipeline_step()
    def int_name(data, ctx):
        ctx.record(7, 1.0)
        return data

    with pytest.raises(ExperimentFailedError) as failed:
        Experiment(numbers(), [int_name()], name="intname").run(executor="inline")
    error = failed.value.results["intname"].errors["baseline_rep_0"]
    assert "metric names are non-empty strings" in str(error)

    @pipeline_step()
    def opaque(data, ctx):
        return data, {"fn": lambda x: x}

    with pytest.raises(ExperimentFailedError) as failed:
        Experiment(numbers(), [opaque()], name="opaque").run(executor="inline")
    error = failed.value.results["opaque"].errors["baseline_rep_0"]
    assert "metric 'fn'" in str(error) and "pickle refuses it" in str(error)


# -- 5. corruption is never trusted ------------------------------------------------------------
def test_truncated_artifact_or_edited_results_are_rerun_with_the_reason():
    first = experiment().run(executor="inline")
    calls()
    path = first.artifact_path("out.json", "baseline", 1)
    path.write_text(path.read_text()[:5])
    again = experiment().run(executor="inline", strategy="resume")
    assert again.executed and "out.json has 5 bytes" in again.reason
    assert calls() == ["baseline:1"]  # only the unit whose artifact was damaged

    results = again.version_dir / "metadata.json"
    results.write_text(results.read_text().replace('"total": [6,', '"total": [60,'))
    third = experiment().run(executor="inline", strategy="resume")
    assert third.executed and "changed since the run wrote it" in third.reason
    assert third.metrics.baseline.metrics["total"] == [6, 6, 6]


def test_an_artifact_edited_in_place_to_its_own_size_is_rerun_and_a_touched_one_is_not():
    first = experiment().run(executor="inline")
    calls()
    path = first.artifact_path("out.json", "baseline", 2)
    text = path.read_text()
    # Edits come after the run: their time is set, not waited for.
    later = os.stat(first.version_dir / "metadata.json").st_mtime_ns + 10**9
    os.utime(path, ns=(later, later))
    touched = experiment().run(executor="inline", strategy="resume")
    assert not touched.executed and calls() == []  # same content: its hash matches

    edited = text.replace("6", "7")
    assert edited != text and len(edited) == len(text)
    path.write_text(edited)
    os.utime(path, ns=(later, later))
    again = experiment().run(executor="inline", strategy="resume")
    assert again.executed and "out.json was edited after it was stored" in again.reason
    assert calls() == ["baseline:2"]
    assert again.artifact_path("out.json", "baseline", 2).read_text() == text


def test_a_record_pointing_outside_its_version_is_refused_not_followed():
    from crystallize.store import MARKER, content_hash

    first = experiment(strategy="resume").run(executor="inline")
    v0 = first.version_dir
    results = v0 / "metadata.json"
    data = results.read_text().replace('"path": "baseline~r0~', '"path": "../../../outside~')
    results.write_text(data)
    # re-sealed, as an attacker would
    (v0 / MARKER).write_text(content_hash(data.encode()))
    status = experiment_status(ExperimentGraph(experiment(strategy="resume")))["solo"]
    assert status.state == "stale" and "is not inside the version" in status.reason
    again = experiment(strategy="resume").run(executor="inline")
    assert again.executed and not Path("outside").exists()  # v0/../../../outside


@pytest.mark.parametrize("edit", [
    lambda meta: "a string",
    lambda meta: {**meta, "conditions": []},
    lambda meta: {**meta, "replicates": "abc"},
    lambda meta: {**meta, "conditions": {"baseline": {"origin": 3}}},
])
def test_structurally_wrong_metadata_means_rerun_and_says_why(tmp_path, edit):
    folder_experiment(tmp_path)
    ok(cli("run", "exps", cwd=tmp_path))
    meta_path = tmp_path / "data" / "solo" / "v0" / "metadata.json"
    meta_path.write_text(json.dumps(edit(json.loads(meta_path.read_text()))))
    out = " ".join(ok(cli("status", "exps", cwd=tmp_path)).split())
    assert "stale" in out and "v0 is not usable" in out and "metadata.json" in out
    out = ok(cli("run", "exps", "--strategy", "resume", cwd=tmp_path))
    assert "executed -> v1" in out and "not usable" in " ".join(out.split())


def test_a_leftover_doomed_mark_makes_status_and_run_agree():
    experiment().run(executor="inline")
    calls()
    Path("data/solo/v0/.doomed").touch()  # a pruner died between marking and deciding
    graph = ExperimentGraph(experiment(strategy="resume"))
    assert experiment_status(graph)["solo"].state == "complete"
    again = experiment().run(executor="inline", strategy="resume")
    assert again.resumed and again.version == 0 and calls() == []


# -- 6. a version with failed units is not complete --------------------------------------------
def test_failed_unit_never_prunes_the_complete_version_and_resume_reruns_only_it():
    experiment().run(executor="inline")
    Path("fail.txt").write_text("baseline:1")
    partial = experiment().run(executor="inline")  # versioned=False, strategy rerun
    assert set(partial.errors) == {"baseline_rep_1"}
    assert versions() == ["v0", "v1"]
    assert json.loads(Path("data/solo/v0/metadata.json").read_text())["status"] == "complete"
    assert json.loads(Path("data/solo/v1/metadata.json").read_text())["status"] == "partial"
    status = experiment_status(ExperimentGraph(experiment(strategy="resume")))["solo"]
    assert status.state == "stale" and "baseline rep 1: failed in v1" in status.reason

    Path("fail.txt").unlink()
    calls()
    fixed = experiment().run(executor="inline", strategy="resume")
    assert calls() == ["baseline:1"] and "baseline rep 1: failed in v1" in fixed.reason
    assert fixed.metrics.baseline.metrics["total"] == [6, 6, 6] and not fixed.errors
    assert versions() == [f"v{fixed.version}"]


# -- 7. clean really deletes -------------------------------------------------------------------
def test_clean_deletes_old_failed_abandoned_and_trash_and_all(tmp_path):
    folder = folder_experiment(tmp_path, strategy="")  # rerun: a new version each run
    config = folder / "config.yaml"
    config.write_text(config.read_text() + "plugins:\n  - ArtifactPlugin: "
                      "{versioned: true, artifact_retention: 9}\n")
    ok(cli("run", "exps", cwd=tmp_path))
    ok(cli("run", "exps", cwd=tmp_path))
    steps = folder / "steps.py"
    steps.write_text(steps.read_text().replace("    return data,",
                                               "    raise RuntimeError('x')\n    return data,"))
    cli("run", "exps", cwd=tmp_path)  # every unit fails: v2 failed
    store = tmp_path / "data" / "solo"
    (store / "v3" / "baseline").mkdir(parents=True)  # abandoned by a killed run
    (store / ".trash-v7-0123abcd" / "baseline").mkdir(parents=True)  # interrupted pruning
    assert json.loads((store / "v2" / "metadata.json").read_text())["status"] == "failed"

    out = ok(cli("clean", "exps", cwd=tmp_path))
    line = next(li for li in out.splitlines() if "solo" in li)
    assert "v0" in line and "v2" in line and "v3" in line and ".trash-v7" in line
    assert str(tmp_path) not in line
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == ["v1"]
    assert not list(store.glob(".trash-*"))

    out = ok(cli("clean", "exps", "--all", cwd=tmp_path))
    assert "v1" in out and not list(store.glob("v*"))
    err = user_mistake(cli("clean", "exps", "--all", "--keep", "2", cwd=tmp_path))
    assert "not allowed with argument" in err


# -- 8. no version or lease file accumulates ---------------------------------------------------
def test_resume_reruns_leave_one_version_and_no_lease_files():
    for offset in range(3):  # each a change of parameter: the resume reruns
        result = experiment(offset=offset).run(executor="process", max_workers=2,
                                               strategy="resume")
        assert result.executed
        assert versions() == [f"v{offset}"]
    experiment(offset=2).run(executor="inline", strategy="resume")
    assert list(Path("data/.leases").iterdir()) == []


# -- 9. a read-only store serves a cached resume -----------------------------------------------
READ_ONLY = """\
import sys, warnings
from crystallize.cli import main
sys.path.insert(0, {tests!r})
warnings.simplefilter("always")
from test_store_safety import experiment
result = experiment().run(executor="process", strategy="resume")
print("RESUMED", result.resumed, result.version, result.metrics.baseline.metrics["total"])
sys.exit(main(["clean", "exps", "--all"]))
"""


def test_a_read_only_store_serves_a_fully_cached_resume_with_a_warning(tmp_path):
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare to mount the store read-only")
    folder_experiment(tmp_path)
    experiment().run(executor="inline")
    script = tmp_path / "read_only.py"
    script.write_text(READ_ONLY.format(tests=str(Path(__file__).parent)))
    data = tmp_path / "data"
    inner = (f"mount --bind -o ro {data} {data} && "
             f"exec {sys.executable} {script}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "200"}
    done = subprocess.run(["unshare", "-rm", "sh", "-c", inner], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "RESUMED True 0 [6, 6, 6]" in done.stdout, done.stdout + done.stderr
    err = " ".join(done.stderr.split())
    assert "cannot write a lease" in err and "Read-only file system" in err
    assert done.returncode == 2 and "error: cannot clean" in err and "Traceback" not in err
    assert versions() == ["v0"]


# -- 10. status tells the truth ----------------------------------------------------------------
def test_status_honours_strategy_rerun_and_names_the_store_root(tmp_path):
    folder_experiment(tmp_path, strategy="")
    ok(cli("run", "exps", cwd=tmp_path))
    out = " ".join(ok(cli("status", "exps", cwd=tmp_path)).split())
    assert "complete" not in out and "strategy is rerun" in out
    assert f"store: {tmp_path / 'data'}" in out
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = " ".join(ok(cli("status", str(tmp_path / "exps"), cwd=elsewhere)).split())
    assert f"store: {elsewhere / 'data'}" in out


@pipeline_step()
def hold(data, ctx):
    # Holds its unit until the test creates "release" (bounded, so nothing hangs for ever).
    Path(f"started-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while not Path("release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return data, {"n": len(data)}


def held(replicates: int = 1) -> Experiment:
    return Experiment(numbers(), [hold()], name="held", replicates=replicates)


HOLDER = """\
import sys
sys.path.insert(0, {tests!r})
from crystallize import ProcessExecutor
from test_store_safety import held
# One unit per worker, never two in one batch: the test needs each unit in its own process.
executor = ProcessExecutor(max_workers={replicates}, batching=False)
held({replicates}).run(executor=executor, strategy="resume")
"""


def start_holder(tmp_path: Path, replicates: int) -> subprocess.Popen[str]:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER.format(tests=str(Path(__file__).parent), replicates=replicates))
    return subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def wait_for(predicate, what: str, seconds: float = 30.0, process=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (value := predicate()):
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process ended: {process.communicate()}")
        time.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def test_a_waiting_run_says_whom_it_waits_for(tmp_path):
    holder = start_holder(tmp_path, 1)
    try:
        wait_for(lambda: list(tmp_path.glob("started-*")), "the holder's unit to start",
                 process=holder)
        events = []
        finished = threading.Event()
        outcome = {}

        def second():
            outcome["result"] = held().run(executor="inline", strategy="resume",
                                           on_event=events.append)
            finished.set()

        thread = threading.Thread(target=second)
        thread.start()
        waiting = wait_for(lambda: [e for e in events if e.kind == "waiting"], "a waiting event")
        assert f"pid {holder.pid}" in waiting[0].reason and "experiment held" in waiting[0].reason
        assert not finished.is_set()
        (tmp_path / "release").touch()
        thread.join(timeout=60)
        assert holder.wait(timeout=60) == 0, holder.stderr.read() if holder.stderr else ""
        assert outcome["result"].resumed  # it reused what the holder computed
    finally:
        (tmp_path / "release").touch()
        holder.kill()
        holder.wait()


# -- 11. workers die with their parent ---------------------------------------------------------
def test_pool_workers_exit_when_the_parent_is_killed(tmp_path):
    parent = start_holder(tmp_path, 2)
    workers: list[int] = []
    try:
        started = wait_for(lambda: (found := list(tmp_path.glob("started-*"))) and
                           len(found) == 2 and found, "both units to start", process=parent)
        workers = [int(p.name.split("-")[1]) for p in started]
        assert parent.pid not in workers and all(is_alive(w) for w in workers)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_for(lambda: not any(is_alive(w) for w in workers), "the workers to exit", 20)
    finally:
        parent.kill()
        parent.wait()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
