"""The files of a version (issue 12): a tiny node creates five inodes, every file lies directly
in ``vN/`` under a name no two units share, a version whose marker was never written is trusted
nowhere (its journal still serves), and a version of the older layout is rerun, yet kept and
pruned by the status it recorded."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from test_cli import cli, ok
from test_store_safety import OUT, calls, experiment, folder_experiment, measure, numbers

from crystallize import (
    Artifact,
    ArtifactPlugin,
    Experiment,
    ExperimentGraph,
    Treatment,
    pipeline_step,
)
from crystallize.errors import CorruptRecordError, ExperimentFailedError
from crystallize.running import experiment_status
from crystallize.store import MARKER, ExperimentStore, artifact_file
from crystallize.store._names import value_file


@pipeline_step()
def produce(data, ctx, out: Artifact):
    out.write(b"x")
    return data


def tiny_graph(count: int) -> ExperimentGraph:
    nodes = []
    for i in range(count):
        out = Artifact(f"out{i}.bin")
        nodes.append(Experiment(numbers(), [produce(out=out)], name=f"tiny{i}", outputs=[out]))
    return ExperimentGraph(*nodes)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def created(monkeypatch) -> list[Path]:
    """The directories and files created (through ``os``, as the store does) from now on."""
    paths: list[Path] = []
    real_mkdir, real_open = os.mkdir, os.open

    def mkdir(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)  # raises (uncounted) when it exists
        paths.append(Path(path).resolve())

    def open_(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        if flags & os.O_CREAT:
            paths.append(Path(path).resolve())
        return fd

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    return paths


def test_a_tiny_node_creates_five_inodes(created):
    tiny_graph(3).run(executor="inline")
    data = Path("data").resolve()
    per_node: dict[str, int] = {}
    for path in created:
        node = path.relative_to(data).parts[0] if path.is_relative_to(data) and path != data \
            else ""
        if node.startswith("tiny"):
            per_node[node] = per_node.get(node, 0) + 1
    # <exp>/, vN/, the artifact, metadata.json and its marker (the store root, the graph run's
    # lease and the known code are the run's, not a node's)
    assert per_node == {"tiny0": 5, "tiny1": 5, "tiny2": 5}
    assert tree(Path("data/tiny0")) == [
        "v0", f"v0/{MARKER}", "v0/baseline~r0~ProduceStep~out0.bin", "v0/metadata.json"]


def test_units_of_a_version_are_files_directly_in_it_and_the_journal_goes_once_published():
    exp = Experiment(numbers(), [measure(out=OUT)], name="solo", replicates=2, outputs=[OUT],
                     treatments=[Treatment("a~r1", {"offset": 1})])
    result = exp.run(executor="inline")
    v0 = result.version_dir
    artifacts = {f"{c}~r{r}~MeasureStep~out.json" for c in ("baseline", "a%7Er1")
                 for r in (0, 1)}
    values = {f"{c}~r{r}~0.pkl" for c in ("baseline", "a%7Er1") for r in (0, 1)}  # Fractions
    assert set(tree(v0)) == artifacts | values | {MARKER, "metadata.json"}
    assert result.artifact_path("out.json", "a~r1", 1) == v0 / "a%7Er1~r1~MeasureStep~out.json"
    assert result.metrics.treatments["a~r1"].metrics["total"] == [7, 7]


def test_file_names_never_collide_and_stay_short():
    parts = [("a", 0, "s", "n"), ("a~r0", 0, "s", "n"), ("a", 0, "s~n", ""), ("a%7E", 0, "s", "n"),
             ("a", 1, "s", "n"), ("a", 0, "s", "n~"), ("x" * 200, 0, "y" * 200, "z" * 200),
             ("x" * 200, 0, "y" * 200, "w" * 200)]
    names = [artifact_file(*p) for p in parts]
    names += [value_file("a", 0, 0, "npy"), value_file("a~r0~s", 0, 0, "npy")]
    assert len(set(names)) == len(names)
    assert all(len(n.encode()) <= 240 and "/" not in n and not n.startswith(".") for n in names)
    long = artifact_file("x" * 200, 3, "y" * 200, "report.csv")
    assert long.startswith("~") and long.endswith(".csv")


def test_a_version_whose_marker_was_never_written_is_not_trusted_but_its_journal_serves(
    monkeypatch,
):
    real_open = os.open

    def disk_full_at_the_marker(path, flags, *args, **kwargs):
        if Path(path).name == MARKER:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as patched, pytest.raises(ExperimentFailedError,
                                                        match="No space left"):
        patched.setattr(os, "open", disk_full_at_the_marker)
        experiment().run(executor="inline")
    assert calls() == ["baseline:0", "baseline:1", "baseline:2"]
    store = ExperimentStore(Path("data").resolve(), "solo")
    with pytest.raises(CorruptRecordError, match="marker missing"):
        store.read(0)
    assert store.newest_complete() is None
    status = experiment_status(ExperimentGraph(experiment(strategy="resume")))["solo"]
    assert status.state == "stale" and "marker missing" in status.reason
    # The units journaled before the publication are reused; the last one was never journaled.
    again = experiment().run(executor="inline", strategy="resume")
    assert again.executed and calls() == ["baseline:2"]
    assert again.metrics.baseline.metrics["total"] == [6, 6, 6]
    assert store.newest_complete().number == again.version  # type: ignore[union-attr]


def test_the_journal_of_an_interrupted_run_of_the_older_layout_is_not_reused(monkeypatch):
    real_open = os.open

    def disk_full_at_the_marker(path, flags, *args, **kwargs):
        if Path(path).name == MARKER:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as patched, pytest.raises(ExperimentFailedError):
        patched.setattr(os, "open", disk_full_at_the_marker)
        experiment().run(executor="inline")
    calls()
    # Made into what the older layout left when interrupted: no metadata.json, the journal's
    # header without a schema, and artifacts in a folder per replicate, condition and step.
    v0 = Path("data/solo/v0")
    (v0 / "metadata.json").unlink()
    header, *units = (v0 / "units.jsonl").read_text().splitlines()
    header = json.dumps({k: v for k, v in json.loads(header).items() if k != "schema_version"})
    for r in (0, 1):
        nested = v0 / f"replicate_{r}" / "baseline" / "MeasureStep" / "out.json"
        nested.parent.mkdir(parents=True)
        (v0 / f"baseline~r{r}~MeasureStep~out.json").rename(nested)
        units[r] = units[r].replace(f"baseline~r{r}~MeasureStep~out.json",
                                    f"replicate_{r}/baseline/MeasureStep/out.json")
    (v0 / "units.jsonl").write_text("\n".join([header, *units]) + "\n")
    again = experiment().run(executor="inline", strategy="resume")
    assert again.executed and calls() == ["baseline:0", "baseline:1", "baseline:2"]
    assert again.metrics.baseline.metrics["total"] == [6, 6, 6]


def old_layout_version(root: Path, number: int, status: str = "complete") -> Path:
    """A version as the store wrote it before schema 3: a folder per condition and replicate."""
    v = root / "solo" / f"v{number}"
    (v / "baseline").mkdir(parents=True)
    (v / "replicate_0" / "baseline" / "MeasureStep").mkdir(parents=True)
    (v / "replicate_0" / "baseline" / "MeasureStep" / "out.json").write_text('{"total": 6}')
    results = json.dumps({"schema_version": 2, "condition": "baseline", "replicates": 1}).encode()
    (v / "baseline" / "results.json").write_bytes(results)
    (v / "baseline" / MARKER).touch()
    (v / "metadata.json").write_text(json.dumps({
        "schema_version": 2, "experiment": "solo", "version": number, "status": status,
        "replicates": 1, "seeds": [1], "fingerprint": {}, "conditions": {"baseline": {
            "treatment": "none", "state": "complete", "complete": True,
            "executed_replicates": [0],
            "results": {"path": "baseline/results.json", "size": len(results), "blake2b": "0"}}},
    }))
    return v


def test_a_version_of_the_older_layout_is_rerun_with_the_reason_and_kept_by_its_status(tmp_path):
    folder_experiment(tmp_path)
    old = old_layout_version(tmp_path / "data", 0)
    status = " ".join(ok(cli("status", "exps", cwd=tmp_path)).split())
    assert "stale" in status and "older layout" in status
    ok(cli("list", "exps", cwd=tmp_path))
    ok(cli("metrics", "exps", cwd=tmp_path))
    ok(cli("clean", "exps", "--keep", "1", cwd=tmp_path))
    assert old.is_dir()  # complete in its own layout: clean keeps it as the newest complete
    out = " ".join(ok(cli("run", "exps", "--strategy", "resume", cwd=tmp_path)).split())
    assert "executed -> v1" in out and "older layout" in out
    # Pruned as a complete version beyond the one to keep, once a newer one is complete.
    assert not old.exists()
    status = " ".join(ok(cli("status", "exps", cwd=tmp_path)).split())
    assert "complete │ v1" in status


def test_pruning_keeps_complete_versions_of_the_older_layout_within_retention():
    root = Path("data").resolve()
    old_layout_version(root, 0)
    unfinished = old_layout_version(root, 1, status="partial")
    plugin = ArtifactPlugin(root_dir="data", versioned=True, artifact_retention=2)
    Experiment(numbers(), [measure(out=OUT)], name="solo", outputs=[OUT],
               plugins=[plugin]).run(executor="inline")
    store = ExperimentStore(root, "solo")
    # v0 is complete in its own layout, within the two kept; v1 was superseded.
    assert store.version_numbers() == [2, 0] and not unfinished.exists()
