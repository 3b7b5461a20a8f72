"""Runs on an external Dask cluster: a scheduler and workers started as separate processes
(``python -m distributed.cli.dask_scheduler`` / ``dask_worker``), each worker in a working
directory of its own, stopped by their own PIDs. Never a LocalCluster standing in for one."""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import dask
import distributed
import pytest

import crystallize
from crystallize import DaskExecutor, ExperimentGraph, SeedPlugin
from crystallize.cli import main
from crystallize.errors import WorkerKilledError

REPO = Path(crystallize.__file__).resolve().parents[1]
#: How long anything a test waits for (a process up, a file, a worker) may take on a busy machine.
PATIENCE = 90.0


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200", **extra}


def wait_until(check, what: str) -> None:
    """Poll ``check`` until it is true, at most :data:`PATIENCE` seconds."""
    deadline = time.monotonic() + PATIENCE
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    """Stop a process we started, by its PID (a nanny takes its worker with it)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Cluster:
    """A scheduler and workers, each a process of its own; stopped by :meth:`close`."""

    def __init__(self, folder: Path, scheduler_env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.file = folder / "scheduler.json"
        self.procs: list[subprocess.Popen] = []
        self.scheduler = self._start(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", "0", "--no-dashboard", "--scheduler-file", str(self.file)],
            folder, {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
                     **(scheduler_env or {})})
        wait_until(self.file.exists, "the scheduler file")
        wait_until(lambda: "address" in self._info(), "the scheduler's address")
        self.address = self._info()["address"]

    def _info(self) -> dict:
        try:
            return json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}

    def _start(self, argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
        log = open(cwd / f"{len(self.procs)}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, cwd=cwd, env=_env(**env), stdout=log,
                                stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def add_worker(self, name: str, hide: Path | None = None) -> subprocess.Popen:
        """A worker (under a nanny) in its own folder; ``hide``: a folder it must not see."""
        workdir = self.folder / name
        workdir.mkdir()
        argv = [sys.executable, "-m", "distributed.cli.dask_worker", "--nthreads", "1",
                "--no-dashboard", "--name", name, "--scheduler-file", str(self.file)]
        if hide is not None:
            # Its own mount namespace, with an empty tmpfs where the project folder is: the
            # same path exists there, but holds nothing of the store (another machine).
            argv = ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"',
                    str(hide), *argv]
        return self._start(argv, workdir, {})

    def client(self) -> distributed.Client:
        return distributed.Client(self.address, set_as_default=False)

    def worker_pids(self, client: distributed.Client, count: int) -> set[int]:
        client.wait_for_workers(count, timeout=PATIENCE)
        return set(client.run(os.getpid).values())

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """One scheduler and two workers shared by the tests of this module that are safe to share."""
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.add_worker("w1")
        c.add_worker("w2")
        with c.client() as client:
            client.wait_for_workers(2, timeout=PATIENCE)
        yield c
    finally:
        c.close()


@pytest.fixture
def own_cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A scheduler with no workers yet, for a test that adds its own."""
    c = Cluster(tmp_path_factory.mktemp("own"))
    try:
        yield c
    finally:
        c.close()


def can_hide_folders() -> str | None:
    """Why a worker cannot be given a mount namespace here (None: it can)."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a mount namespace here: {probe.stderr.strip()}"
    return None


# -- the graph: a producer with a treatment, and its consumer ---------------------------------
PRODUCER_STEPS = '''
import json, os, time
from pathlib import Path
from crystallize import Artifact, pipeline_step

@pipeline_step()
def produce(data, ctx, summary: Artifact, factor: int = 1, gate: str = ""):
    if gate:
        # Tell the test this unit started (and where), then wait until it lets units go on.
        Path(gate, f"started-{ctx['condition']}-{ctx['replicate']}-{os.getpid()}").touch()
        while not Path(gate, "go").exists():
            time.sleep(0.02)
    value = (ctx["seed"] % 1000) * factor
    summary.write(json.dumps({"value": value}))
    return data, {"value": value, "pid": os.getpid()}
'''

CONSUMER_STEPS = '''
import json, os
from crystallize import pipeline_step

@pipeline_step()
def consume(data, ctx):
    return data, {"upstream": json.loads(data["summary"])["value"], "pid": os.getpid()}
'''


def write_graph(root: Path, replicates: int = 2, gate: Path | None = None) -> Path:
    producer, consumer = root / "producer", root / "consumer"
    producer.mkdir(parents=True)
    consumer.mkdir()
    params = f": {{gate: {json.dumps(str(gate))}}}" if gate else ""
    (producer / "config.yaml").write_text(textwrap.dedent(f"""\
        name: producer
        replicates: {replicates}
        datasource:
          numbers: numbers
        steps:
          - produce{params}
        treatments:
          double: {{factor: 2}}
        outputs:
          summary: {{file_name: summary.json}}
        """))
    (producer / "datasources.py").write_text(
        "from crystallize import data_source\n\n"
        "@data_source\ndef numbers(ctx):\n    return [1, 2, 3]\n")
    (producer / "steps.py").write_text(PRODUCER_STEPS)
    (consumer / "config.yaml").write_text(textwrap.dedent(f"""\
        name: consumer
        replicates: {replicates}
        datasource:
          summary: producer#summary
        steps:
          - consume
        """))
    (consumer / "steps.py").write_text(CONSUMER_STEPS)
    return root


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crystallize.cli", *args], cwd=cwd,
                          env=_env(**env), capture_output=True, text=True, timeout=PATIENCE)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return " ".join(result.stdout.split())


def resumed_locally(root: Path) -> dict[str, crystallize.Result]:
    """The stored results, read back by a local run that must recompute nothing."""
    results = ExperimentGraph.from_yaml(root).run(strategy="resume", executor="inline")
    assert {n: r.executed for n, r in results.items()} == {"producer": False, "consumer": False}, \
        {n: r.reason for n, r in results.items()}
    return results


def unit_pids(results: dict[str, crystallize.Result]) -> set[int]:
    return {pid for r in results.values()
            for cond in [r.metrics.baseline, *r.metrics.treatments.values()]
            for pid in cond.metrics["pid"]}


def expected_values(replicates: int = 2) -> list[int]:
    return [SeedPlugin().replicate_seed("producer", r) % 1000 for r in range(replicates)]


# -- the three ways to point `run` at a cluster -------------------------------------------------
def test_cli_runs_on_an_external_cluster_three_ways(cluster: Cluster, tmp_path: Path) -> None:
    root = write_graph(tmp_path / "graph")
    with cluster.client() as client:
        workers = cluster.worker_pids(client, 2)
    ways = [
        (["--scheduler", cluster.address], {}),
        (["--scheduler-file", str(cluster.file)], {}),
        (["--executor", "dask"], {"DASK_SCHEDULER_ADDRESS": cluster.address}),
    ]
    for args, env in ways:
        ok(cli("run", str(root), "--strategy", "rerun", *args, cwd=tmp_path, **env))
        results = resumed_locally(root)
        assert unit_pids(results) <= workers, args  # every unit ran on a worker
        assert os.getpid() not in unit_pids(results)
        producer, consumer = results["producer"].metrics, results["consumer"].metrics
        assert producer.baseline.metrics["value"] == expected_values()
        assert consumer.treatments["double"].metrics["upstream"] == \
            producer.treatments["double"].metrics["value"]
    assert not list((tmp_path / "data").glob(".crystallize-probe-*"))  # the probe is removed


def test_scheduler_with_another_executor_is_a_usage_error(capsys, tmp_path: Path) -> None:
    root = write_graph(tmp_path / "graph")
    assert main(["run", str(root), "--scheduler", "tcp://127.0.0.1:8786",
                 "--executor", "process"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--scheduler" in err and "--executor process" in err
    assert not (tmp_path / "data").exists()


# -- cluster mistakes: one paragraph, quickly, nothing run -----------------------------------
def _refused(capsys, root: Path, *args: str) -> str:
    assert main(["run", str(root), *args]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return " ".join(captured.err.split())


def test_cluster_mistakes_are_one_paragraph_errors(capsys, tmp_path: Path) -> None:
    root = write_graph(tmp_path / "graph")
    silent = socket.socket()  # accepts connections, never says a word: not a Dask scheduler
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    free = socket.socket()  # a port nothing listens on
    free.bind(("127.0.0.1", 0))
    unreachable = f"tcp://127.0.0.1:{free.getsockname()[1]}"
    free.close()
    mute = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
    try:
        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
            err = _refused(capsys, root, "--scheduler", unreachable)
            assert f"cannot reach the Dask scheduler at {unreachable}" in err
            assert "distributed.comm.timeouts.connect" in err
            err = _refused(capsys, root, "--scheduler", "tcp://127.0.0.1:port")
            assert "tcp://127.0.0.1:port" in err and "malformed address" in err
            err = _refused(capsys, root, "--scheduler", "http://127.0.0.1:8787")
            assert "protocol 'http://'" in err and "dashboard" in err
            err = _refused(capsys, root, "--scheduler", mute)
            assert mute in err and "did not answer as a Dask scheduler" in err
            err = _refused(capsys, root, "--scheduler-file", str(tmp_path / "nope.json"))
            assert "nope.json does not exist" in err
    finally:
        silent.close()
    assert not (tmp_path / "data").exists()  # nothing ran


def test_a_scheduler_without_workers_is_waited_for_then_refused(
    own_cluster: Cluster, capsys, tmp_path: Path,
) -> None:
    root = write_graph(tmp_path / "graph")
    assert main(["run", str(root), "--scheduler", own_cluster.address,
                 "--wait-for-workers", "0.5"]) == 2
    captured = capsys.readouterr()
    said = " ".join(captured.out.split())
    err = " ".join(captured.err.split())
    assert f"waiting up to 0.5 s for workers to join the Dask scheduler at {own_cluster.address}" \
        in said
    assert "no workers" in err and own_cluster.address in err and "Traceback" not in err
    assert not list((tmp_path / "data").glob("*/v*"))


def test_mismatched_versions_are_refused(tmp_path_factory, capsys, tmp_path: Path) -> None:
    # The scheduler's environment reports another toolz than this one (a second installation
    # earlier on its path), as on a cluster set up from another environment.
    fake = tmp_path_factory.mktemp("site")
    info = fake / "toolz-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toolz\nVersion: 0.0.1\n")
    c = Cluster(tmp_path_factory.mktemp("old"), {"PYTHONPATH": f"{fake}{os.pathsep}{REPO}"})
    try:
        err = _refused(capsys, write_graph(tmp_path / "graph"), "--scheduler", c.address)
    finally:
        c.close()
    assert c.address in err and "other versions of packages" in err
    assert "toolz" in err and "0.0.1" in err


# -- the store, verified on every worker --------------------------------------------------------
@pytest.mark.skipif(can_hide_folders() is not None, reason=str(can_hide_folders()))
def test_worker_blind_to_the_store_gets_no_unit_then_the_run_is_refused(
    own_cluster: Cluster, tmp_path: Path, monkeypatch,
) -> None:
    project = tmp_path / "project"
    gate = project / "gate"
    gate.mkdir(parents=True)
    monkeypatch.chdir(project)
    root = write_graph(project / "graph", replicates=3, gate=gate)
    own_cluster.add_worker("seeing")
    with own_cluster.client() as client:
        seeing = own_cluster.worker_pids(client, 1)
        run = subprocess.Popen(
            [sys.executable, "-m", "crystallize.cli", "run", str(root), "--scheduler",
             own_cluster.address], cwd=project, env=_env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            # Once the run is under way, a worker that cannot see the project joins.
            wait_until(lambda: any(gate.glob("started-*")), "a unit to start")
            own_cluster.add_worker("blind", hide=project)
            client.wait_for_workers(2, timeout=PATIENCE)
            blind = next(a for a, w in client.scheduler_info()["workers"].items()
                         if w["name"] == "blind")
            (gate / "go").touch()
            out, err = run.communicate(timeout=PATIENCE)
        finally:
            stop(run)
        assert run.returncode == 0, out + err
        # Units handed to the blind worker came back unrun and went to the other one.
        assert unit_pids(resumed_locally(root)) <= seeing
        # The next run finds the blind worker among the workers and refuses to start.
        refused = cli("run", str(root), "--scheduler", own_cluster.address, cwd=project)
    err = " ".join(refused.stderr.split())
    assert refused.returncode == 2 and "Traceback" not in err, refused.stdout + err
    store = project / "data"
    assert f"cannot see the store {store}" in err and blind in err
    assert "filesystem every worker mounts" in err
    assert "nothing was run" in err
    # no version beyond the first run's: nothing ran
    assert [p.name for p in (store / "producer").glob("v*")] == ["v0"]
    assert not list(store.glob(".crystallize-probe-*"))


# -- worker loss --------------------------------------------------------------------------------
def test_a_worker_killed_mid_run_is_replaced_and_reported(cluster: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    root = write_graph(tmp_path / "graph", replicates=2, gate=gate)
    run = subprocess.Popen(
        [sys.executable, "-m", "crystallize.cli", "run", str(root), "--scheduler",
         cluster.address], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: any(gate.glob("started-*")), "a unit to start")
        started = next(gate.glob("started-*")).name.split("-")
        victim_unit, victim = f"{started[1]} rep {started[2]}", int(started[3])
        os.kill(victim, signal.SIGKILL)  # the worker process running that unit
        (gate / "go").touch()
        out, err = run.communicate(timeout=PATIENCE)
    finally:
        stop(run)
    assert run.returncode == 0, out + err
    out = " ".join(out.split())
    # Every unit the lost worker held is listed, in whatever order the worker took them.
    unit = re.escape(f"producer {victim_unit}")
    assert re.search(rf"was lost; re-ran elsewhere: (producer \w+ rep \d+, )*{unit}\b", out), out
    results = resumed_locally(root)
    assert results["producer"].metrics.baseline.metrics["value"] == expected_values()
    assert victim not in unit_pids(results)


def _one_step_folder(folder: Path, settings: str, step: str, steps_py: str) -> None:
    """A folder experiment named after ``folder``: one datasource of ``[1]``, one step."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        f"name: {folder.name}\n{settings}datasource:\n  numbers: numbers\n"
        f"steps:\n  - {step}\n")
    (folder / "datasources.py").write_text(
        "from crystallize import data_source\n\n"
        "@data_source\ndef numbers(ctx):\n    return [1]\n")
    (folder / "steps.py").write_text(steps_py)


KILLER_STEPS = '''
import os
from crystallize import pipeline_step

@pipeline_step()
def maybe_die(data, ctx):
    if ctx["replicate"] == 2:
        os._exit(3)  # as a segfaulting extension would
    return data, {"ok": 1}
'''


def test_a_unit_that_kills_its_worker_fails_alone(cluster: Cluster, tmp_path: Path) -> None:
    root = tmp_path / "graph"
    for name, replicates in (("killer", 6), ("calm", 4)):
        steps = KILLER_STEPS if name == "killer" else KILLER_STEPS.replace("== 2", "== -1")
        _one_step_folder(root / name, f"replicates: {replicates}\n", "maybe_die", steps)
    results = ExperimentGraph.from_yaml(root).run(executor=DaskExecutor(address=cluster.address))
    killer = results["killer"]
    assert set(killer.errors) == {"baseline_rep_2"}, {k: repr(e) for k, e in killer.errors.items()}
    error = killer.errors["baseline_rep_2"]
    assert isinstance(error, WorkerKilledError) and "killed its worker" in str(error)
    assert sum(v == 1 for v in killer.metrics.baseline.metrics["ok"]) == 5
    assert results["calm"].errors == {} and len(results["calm"].metrics.baseline.metrics["ok"]) == 4


def test_a_lent_client_sends_promptly_during_the_run_and_comes_back_as_it_was(
    cluster: Cluster, tmp_path: Path,
) -> None:
    root = write_graph(tmp_path / "graph", replicates=2)
    with cluster.client() as client:
        before = client.scheduler_comm.interval
        during: list[float] = []

        def seen(event: crystallize.Event) -> None:  # runs in this process, mid-run
            if event.kind == "unit_finished":
                during.append(client.scheduler_comm.interval)

        results = ExperimentGraph.from_yaml(root).run(executor=DaskExecutor(client),
                                                      on_event=seen)
        assert unit_pids(results).isdisjoint({os.getpid()})
        # Each trip's message leaves at once, not after Dask's 10 ms batching interval.
        assert during and set(during) == {0.0}
        assert client.scheduler_comm.interval == before > 0
        # Nothing of the run is left on the cluster for this client: no result, no plugin.
        assert client.run_on_scheduler(
            lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks]) == []
        assert not any(name.startswith("crystallize")
                       for name in client.run_on_scheduler(
                           lambda dask_scheduler: list(dask_scheduler.worker_plugins)))


SLOW_STEPS = '''
import os, time
from pathlib import Path
from crystallize import pipeline_step

@pipeline_step()
def maybe_hang(data, ctx, gate: str = ""):
    if ctx["replicate"] == 1:
        # Hangs past the unit's timeout, until the test lets it go (it must not need to).
        deadline = time.monotonic() + 120
        while not Path(gate, "go").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return data, {"pid": os.getpid()}
'''


def test_a_unit_past_its_timeout_fails_named_and_the_others_finish(
    cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    root = tmp_path / "graph"
    for name, replicates in (("hangs", 6), ("calm", 4)):
        gated = f"{{gate: {json.dumps(str(gate))}}}" if name == "hangs" else "{gate: ''}"
        steps = SLOW_STEPS if name == "hangs" else SLOW_STEPS.replace("== 1", "== -1")
        _one_step_folder(root / name, f"replicates: {replicates}\ntimeout: 3\n",
                         f"maybe_hang: {gated}", steps)
    try:
        results = ExperimentGraph.from_yaml(root).run(
            executor=DaskExecutor(address=cluster.address))
        gc.collect()  # an asyncio task nobody awaited says so when it is collected
    finally:
        (gate / "go").touch()  # the hung unit's worker thread ends, for the tests after this
    # Giving up on the unit left no task behind in the client's loop to complain about it.
    assert not [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    hangs = results["hangs"]
    assert set(hangs.errors) == {"baseline_rep_1"}, {k: repr(e) for k, e in hangs.errors.items()}
    error = hangs.errors["baseline_rep_1"]
    assert isinstance(error, TimeoutError)
    assert all(part in str(error) for part in ("'hangs'", "replicate 1", "timeout of 3 s"))
    assert len(hangs.metrics.baseline.metrics["pid"]) == 5
    calm = results["calm"]
    assert calm.errors == {} and len(calm.metrics.baseline.metrics["pid"]) == 4
    assert unit_pids(results).isdisjoint({os.getpid()})
