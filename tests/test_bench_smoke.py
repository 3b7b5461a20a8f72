"""The bench's quick mode, run as CI does: every workload on the core systems, no timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ["loop", "pool", "crystallize-process", "crystallize-thread", "crystallize-inline"]


@pytest.mark.slow
def test_quick_bench_runs_every_workload_on_every_system(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--rounds", "1", "--systems", ",".join(SYSTEMS),
         "--data-dir", str(tmp_path / "scratch"), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    groups = {key.split("-")[0] for key in report["workloads"]}
    assert groups == {"W1", "W2", "W3", "W4", "W5", "W6"}
    measured = {(r["workload"], r["system"]) for r in report["rows"]
                if r["wall_median_s"] is not None and not r["errors"]}
    for workload in report["workloads"]:
        for system in SYSTEMS:
            row = next(r for r in report["rows"]
                       if r["workload"] == workload and r["system"] == system)
            if row["skipped"] is None:
                assert (workload, system) in measured, row
    # the Markdown table names every system that ran
    for system in SYSTEMS:
        assert system in proc.stdout


@pytest.mark.slow
def test_quick_bench_runs_the_dask_systems_on_an_external_cluster(tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "bench.json"
    systems = ["crystallize-dask", "dask-distributed"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--workloads", "W2-chain,W3",
         "--systems", ",".join(systems), "--dask-cluster", "external",
         "--data-dir", str(tmp_path / "scratch"), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["meta"]["dask_cluster"] == "external"
    for row in report["rows"]:
        assert row["wall_median_s"] is not None and not row["errors"], row
    # the scheduler and workers were stopped, and their folders went with the bench's data
    psutil = pytest.importorskip("psutil")
    left = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
            if str(tmp_path) in " ".join(p.info["cmdline"] or ())]
    assert not left
    assert not any((tmp_path / "scratch").iterdir())


def test_an_external_cluster_that_cannot_start_is_named_with_its_log(tmp_path, monkeypatch):
    # A `distributed` that fails to import, first on the path of the cluster's processes.
    fake = tmp_path / "site" / "distributed"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no Dask here')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    from bench.cluster import ClusterStartError, external_cluster

    with (pytest.raises(ClusterStartError) as failed,
          external_cluster(1, tmp_path / "cluster", tmp_path / "elsewhere")):
        pass
    log = tmp_path / "cluster" / "scheduler" / "log"
    assert str(log) in str(failed.value) and "crystallize[dask]" in str(failed.value)
    assert "no Dask here" in log.read_text()
