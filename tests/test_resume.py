"""Resume (SPEC §4.1): reuse exactly what is still valid, rerun the rest, say why."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import textwrap
import uuid
from pathlib import Path

from crystallize import (
    Artifact,
    Experiment,
    ExperimentGraph,
    LoggingPlugin,
    Treatment,
    hypothesis,
    verifier,
)

MODULE = '''
import json
from crystallize import Artifact, pipeline_step, data_source

LOG = {log!r}

def note(what):
    with open(LOG, "a") as f:
        f.write(what + "\\n")

@data_source
def source(ctx):
    return [1, 2, 3]

@pipeline_step()
def produce(data, ctx, summary: Artifact, factor=1):
    note(f"produce {{ctx['condition']}} {{ctx['replicate']}}")
    # a comment that can be edited freely
    summary.write(json.dumps({{"value": sum(data) * factor}}))
    return data, {{"value": sum(data) * factor}}

@pipeline_step()
def consume(data, ctx):
    note(f"consume {{ctx['condition']}} {{ctx['replicate']}}")
    return data, {{"seen": json.loads(data)["value"]}}
'''


class Project:
    """A steps module on disk, re-imported after each edit like a user's edited file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "calls.log"
        self.path = root / "steps_mod.py"
        self.path.write_text(MODULE.format(log=str(self.log)))

    def edit(self, old: str, new: str) -> None:
        text = self.path.read_text()
        assert old in text
        self.path.write_text(text.replace(old, new))

    def load(self):
        name = f"steps_mod_{uuid.uuid4().hex}"
        spec = importlib.util.spec_from_file_location(name, self.path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod

    def calls(self) -> list[str]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        self.log.unlink()
        return lines

    def graph(self, *, treatments=(), consumer_treatments=(), replicates=2, hypotheses=()):
        mod = self.load()
        out = Artifact("summary.json")
        producer = Experiment(mod.source(), [mod.produce(summary=out)], name="producer",
                              replicates=replicates, outputs=[out], treatments=list(treatments),
                              hypotheses=list(hypotheses), initial_ctx={"factor": 1})
        consumer = Experiment(out, [mod.consume()], name="consumer", replicates=replicates,
                              treatments=list(consumer_treatments))
        return ExperimentGraph(producer, consumer)


def run(project, strategy="resume", **kw):
    executor = kw.pop("executor", "inline")
    return project.graph(**kw).run(strategy=strategy, executor=executor)


def test_second_run_is_resumed_with_identical_results(tmp_path):
    @verifier
    def diff(baseline, treatment):
        return {"d": sum(treatment["value"]) - sum(baseline["value"])}

    @hypothesis(verifier=diff(), metrics="value")
    def rank(out):
        return -out["d"]

    p = Project(tmp_path)
    kw = dict(treatments=[Treatment("x2", {"factor": 2})], hypotheses=[rank])
    first = run(p, executor="process", **kw)
    assert len(p.calls()) == 8
    second = run(p, **kw)
    assert p.calls() == []
    for name in ("producer", "consumer"):
        a, b = first[name], second[name]
        assert b.resumed and not b.executed and "nothing changed" in b.reason
        assert a.metrics.baseline.metrics == b.metrics.baseline.metrics
        assert a.metrics.treatments == b.metrics.treatments
        assert a.artifacts == b.artifacts
        assert a.version == b.version
    assert second["producer"].get_hypothesis("rank").results == \
        first["producer"].get_hypothesis("rank").results == {"x2": {"d": 12}}


def test_comment_edit_is_reused_code_edit_reruns_downstream(tmp_path):
    p = Project(tmp_path)
    run(p)
    p.calls()
    p.edit("# a comment that can be edited freely", "# reworded   comment\n    ")
    p.edit('def produce(data, ctx, summary: Artifact, factor=1):',
           'def produce(data, ctx, summary: Artifact, factor=1):\n    """Docstring."""')
    res = run(p)
    assert p.calls() == [] and res["producer"].resumed
    p.edit("sum(data) * factor})", "sum(data) * factor + 1})")
    res = run(p)
    assert "code of step ProduceStep changed" in res["producer"].reason
    assert "upstream producer produced new artifacts" in res["consumer"].reason
    calls = p.calls()
    assert sum(c.startswith("produce") for c in calls) == 2
    assert sum(c.startswith("consume") for c in calls) == 2
    assert res["consumer"].metrics.baseline.metrics["seen"] == [7, 7]


def test_new_treatment_runs_only_the_new_condition(tmp_path):
    p = Project(tmp_path)
    run(p, treatments=[Treatment("x2", {"factor": 2})])
    p.calls()
    res = run(p, treatments=[Treatment("x2", {"factor": 2}), Treatment("x3", {"factor": 3})])
    calls = p.calls()
    assert sorted(calls) == sorted(["produce x3 0", "produce x3 1", "consume x3 0",
                                    "consume x3 1"])
    prod = res["producer"]
    assert prod.executed and "x3: new treatment" in prod.reason
    assert set(prod.reused) == {"baseline", "x2"}
    assert prod.metrics.treatments["x2"].metrics["value"] == [12, 12]
    assert prod.metrics.treatments["x3"].metrics["value"] == [18, 18]
    assert res["consumer"].metrics.treatments["x3"].metrics["seen"] == [18, 18]
    # the reused conditions' artifacts are in the new version too
    for cond in ("baseline", "x2", "x3"):
        assert prod.artifact_path("summary.json", cond, 1).exists()


def test_changed_treatment_payload_reruns_only_that_condition(tmp_path):
    p = Project(tmp_path)
    run(p, treatments=[Treatment("a", {"factor": 2}), Treatment("b", {"factor": 3})])
    p.calls()
    res = run(p, treatments=[Treatment("a", {"factor": 2}), Treatment("b", {"factor": 4})])
    assert sorted(set(c.split()[1] for c in p.calls())) == ["b"]
    assert "b: treatment changed" in res["producer"].reason
    assert res["consumer"].metrics.treatments["b"].metrics["seen"] == [24, 24]


def test_more_replicates_run_only_the_missing_ones(tmp_path):
    p = Project(tmp_path)
    first = run(p, replicates=2)
    p.calls()
    res = run(p, replicates=3)
    # consumer replicates 0 and 1 read the same producer replicates as before: reused
    assert sorted(p.calls()) == ["consume baseline 2", "produce baseline 2"]
    assert "baseline rep 2: new replicate" in res["producer"].reason
    assert res["producer"].metrics.baseline.metrics["value"] == [6, 6, 6]
    assert res["producer"].provenance["seeds"][:2] == first["producer"].provenance["seeds"]
    # fewer replicates than stored are served from the store
    fewer = run(p, replicates=1)
    assert p.calls() == [] and fewer["producer"].metrics.baseline.metrics["value"] == [6]


def test_missing_marker_metadata_or_artifact_means_rerun(tmp_path):
    p = Project(tmp_path)
    first = run(p)
    p.calls()
    v = first["producer"].version_dir
    (v / ".crystallize_complete").unlink()
    res = run(p)
    assert "marker" in res["producer"].reason
    # the producer's artifacts came out identical, so the consumer is reused (early cutoff)
    assert p.calls() == ["produce baseline 0", "produce baseline 1"]
    assert res["consumer"].resumed

    v = res["producer"].version_dir
    first["producer"].version_dir.exists() and shutil.rmtree(first["producer"].version_dir)
    res["producer"].artifact_path("summary.json", "baseline", 0).unlink()
    res2 = run(p)
    assert "artifact file(s) missing" in res2["producer"].reason
    p.calls()

    for meta in Path("data/producer").glob("v*/metadata.json"):
        meta.unlink()
    res3 = run(p)
    assert "no complete run" in res3["producer"].reason


def test_rerun_strategy_always_executes(tmp_path):
    p = Project(tmp_path)
    run(p)
    p.calls()
    res = run(p, strategy="rerun")
    assert len(p.calls()) == 4 and res["producer"].executed


def test_verbose_logging_reports_resume_decisions(tmp_path, caplog):
    p = Project(tmp_path)
    mod = p.load()
    exp = Experiment(mod.source(), [mod.consume()], name="logged",
                     plugins=[LoggingPlugin(verbose=True)])
    mod2 = p.load()
    out = Artifact("summary.json")
    prod = Experiment(mod2.source(), [mod2.produce(summary=out)], name="prod", outputs=[out],
                      plugins=[LoggingPlugin(verbose=True)])
    del exp
    with caplog.at_level("INFO", logger="crystallize"):
        prod.run(strategy="resume", executor="inline")
        prod.run(strategy="resume", executor="inline")
    text = caplog.text
    assert "no complete run in the store" in text
    assert "reusing v0: nothing changed" in text
    assert "ProduceStep done in" in text


def test_metadata_records_fingerprint_parts_and_upstream_versions(tmp_path):
    p = Project(tmp_path)
    res = run(p)
    meta = json.loads((res["consumer"].version_dir / "metadata.json").read_text())
    assert meta["upstreams"]["producer"]["version"] == res["producer"].version
    assert meta["fingerprint"]["steps"][0]["name"] == "ConsumeStep"
    # each unit records the content hash of what it read, which its producer recorded
    produced = json.loads((res["producer"].version_dir / "metadata.json").read_text())
    produced = produced["conditions"]["baseline"]
    read = meta["conditions"]["baseline"]
    assert read["reads"] == [{"producer": {"summary.json": f["blake2b"]}}
                             for f in produced["files"]["summary.json"]]


def test_comment_edit_in_module_text_only(tmp_path):
    """Pure-formatting change of the whole file (blank lines, spacing) keeps the fingerprint."""
    p = Project(tmp_path)
    run(p)
    p.calls()
    p.path.write_text(textwrap.dedent(p.path.read_text()).replace("\n\n", "\n\n\n"))
    res = run(p)
    assert res["producer"].resumed and res["consumer"].resumed


def test_resumed_metrics_keep_values_json_cannot_hold(tmp_path):
    import fractions

    import numpy

    from crystallize import data_source, pipeline_step

    @data_source
    def one(ctx):
        return 1

    @pipeline_step()
    def exotic(data, ctx):
        return data, {"count": numpy.int64(3), "curve": numpy.arange(3.0),
                      "ratio": fractions.Fraction(1, 3), "tags": {"a"}, "plain": 2.5}

    def build():
        return Experiment(one(), [exotic()], name="exotic", replicates=2)

    first = build().run(executor="inline")
    again = build().run(executor="inline", strategy="resume")
    assert again.resumed
    a, b = first.metrics.baseline.metrics, again.metrics.baseline.metrics
    assert b["count"] == a["count"] == [3, 3] and type(b["count"][0]) is numpy.int64
    assert all((x == y).all() for x, y in zip(a["curve"], b["curve"], strict=True))
    assert b["ratio"] == [fractions.Fraction(1, 3)] * 2 and b["tags"] == [{"a"}] * 2
    assert b["plain"] == [2.5, 2.5]
    # JSON-native values stay readable in metadata.json
    stored = json.loads(Path("data/exotic/v0/metadata.json").read_text())
    assert stored["conditions"]["baseline"]["metrics"]["plain"] == [2.5, 2.5]
