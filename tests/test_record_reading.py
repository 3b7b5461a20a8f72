"""What a resume reads (issue 12): the shortcuts taken for well-formed records (no tag, no
escape; entries of the expected types) give exactly what the careful reading gives, anything
else still reaches the careful reading and its messages, and a producer's result is turned into
the view its consumers check once per run, not once per consumer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_store_safety import calls, experiment, numbers

from crystallize import Artifact, Experiment, ExperimentGraph, ExperimentInput, pipeline_step
from crystallize.errors import CorruptRecordError
from crystallize.running import _node
from crystallize.store import ExperimentStore
from crystallize.store._metadata import VersionMetadata
from crystallize.store._records import TAG, decode_json


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("key", [TAG, "\\u005f_crystallize__"])
def test_tagged_values_are_rebuilt_in_any_encoding_json_reads_and_with_escaped_keys(encoding, key):
    text = '{"a": {"K": "tuple", "items": [1, {"K": "bytes", "hex": "ff"}]}}'.replace("K", key)
    assert decode_json(text.encode(encoding)) == {"a": (1, b"\xff")}


def test_records_without_tags_decode_as_plain_json():
    data = json.dumps({"a": [1, 2.5, None, "\u00e9"], "b": {"c": True}}).encode()
    assert decode_json(data) == json.loads(data)


def metadata() -> tuple[Path, dict]:
    first = experiment(strategy="resume").run(executor="inline")
    path = first.version_dir / "metadata.json"
    return path, json.loads(path.read_bytes())


def test_a_resumed_result_is_the_one_the_run_made_side_files_included():
    first = experiment(strategy="resume").run(executor="inline")
    calls()
    again = experiment(strategy="resume").run(executor="inline")
    assert not again.executed and calls() == []
    assert again.metrics.baseline.metrics == first.metrics.baseline.metrics
    assert again.artifacts == first.artifacts
    ratio = again.metrics.baseline.metrics["ratio"]  # pickled into a side file: loaded again
    assert [str(r) for r in ratio] == ["1/3"] * 3
    assert again.records["baseline"].units == first.records["baseline"].units
    stored = ExperimentStore(Path("data").resolve(), "solo").read(0)
    assert stored is not None
    record = stored.condition_record("baseline")
    assert record.with_values(stored.path).units == first.records["baseline"].units


@pytest.mark.parametrize(("column", "entry", "key", "message"), [
    ("files", {"path": "x", "size": "5", "blake2b": "h"}, "files.out.json[1]",
     "expected int"),
    ("files", {"path": "x", "size": True, "blake2b": "h"}, "files.out.json[1]",
     "expected int"),
    ("files", {"path": "../x", "size": 5, "blake2b": "h"}, "files.out.json[1]",
     "not inside the version"),
    ("files", ["x", 5], "files.out.json[1]", "expected a JSON object"),
    ("timings", {"worker": "w", "started": 1, "finished": 2, "attempts": 0, "retried": []},
     "timings[1].attempts", "whole number >= 1"),
    ("timings", {"worker": "w", "started": 1, "finished": 2, "attempts": 1, "retried": [3]},
     "timings[1].retried", "list of strings"),
    ("timings", {"worker": 7, "started": 1, "finished": 2, "attempts": 1, "retried": []},
     "timings[1].worker", "expected str"),
])
def test_a_malformed_unit_entry_names_its_key(column, entry, key, message):
    path, meta = metadata()
    condition = meta["conditions"]["baseline"]
    if column == "files":
        condition["files"]["out.json"][1] = entry
    else:
        condition["timings"][1] = entry
    with pytest.raises(CorruptRecordError) as raised:
        VersionMetadata.from_json(path, json.dumps(meta).encode())
    assert raised.value.key == f"conditions.baseline.{key}"
    assert message in str(raised.value) and str(path) in str(raised.value)


def test_odd_but_valid_unit_entries_read_as_before():
    path, meta = metadata()
    timing = meta["conditions"]["baseline"]["timings"][2]
    timing.update(started=True, finished=3, extra="ignored")  # bool and int are numbers here
    entry = meta["conditions"]["baseline"]["files"]["out.json"][2]
    entry["path"] = "./" + entry["path"]
    unit = VersionMetadata.from_json(path, json.dumps(meta).encode()).conditions[
        "baseline"].record.units[2]
    assert unit.timing is not None and (unit.timing.started, unit.timing.finished) == (1.0, 3.0)
    assert unit.artifacts["out.json"].path == entry["path"]


@pipeline_step()
def emit(data, ctx, out: Artifact):
    out.write(b"x")
    return data


def fan(count: int) -> ExperimentGraph:
    root_out = Artifact("root.bin")
    root = Experiment(numbers(), [emit(out=root_out)], name="root", outputs=[root_out],
                      strategy="resume")
    leaves = []
    for i in range(count):
        out = Artifact(f"leaf{i}.bin")
        leaves.append(Experiment(ExperimentInput(r=root_out), [emit(out=out)], name=f"leaf{i}",
                                 outputs=[out], strategy="resume"))
    return ExperimentGraph(root, *leaves)


def test_a_producer_is_viewed_once_per_run_however_many_consumers_read_it(monkeypatch):
    first = fan(4).run(executor="inline")
    viewed: list[str] = []
    real = _node.upstream_view

    def counting(result):
        viewed.append(result.experiment)
        return real(result)

    monkeypatch.setattr(_node, "upstream_view", counting)
    again = fan(4).run(executor="inline")
    assert viewed == ["root"]
    assert all(not r.executed for r in again.values())
    assert {n: r.version for n, r in again.items()} == {n: r.version for n, r in first.items()}
