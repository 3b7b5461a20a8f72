"""crystallize: one Experiment per workload node, wired through Artifacts.

The same module drives both the package in this repository (variants "process", "thread",
"inline": the executor passed to run) and crystallize-ml 0.27.0 in the reference
interpreter (variant "ml-serial"), because both are imported as `crystallize` and share
the user-facing names; the few API differences are confined to `_pipeline`, `_plugins`
and `_run_kwargs`.
"""

# No `from __future__ import annotations`: both packages find Artifact parameters by
# inspecting annotations, and a string annotation would not match the class.

import time
from typing import Any

import crystallize as cz
from bench.systems import Outcome, RunSpec
from bench.workloads import Workload, sleep_body, unit_body


@cz.data_source
def no_input(ctx: Any) -> Any:
    return None


def _blobs(data: Any) -> list[bytes]:
    # A lone Artifact datasource delivers its bytes; ExperimentInput delivers {alias: bytes}.
    if data is None:
        return []
    if isinstance(data, dict):
        return list(data.values())
    return [data]


@cz.pipeline_step()
def produce(data: Any, ctx: Any, out: cz.Artifact, iters: int = 0) -> Any:
    payload, cpu = unit_body(iters, _blobs(data))
    out.write(payload)
    return payload, {"cpu": cpu}


@cz.pipeline_step()
def compute(data: Any, ctx: Any, iters: int = 0) -> Any:
    _, cpu = unit_body(iters, _blobs(data))
    return data, {"cpu": cpu}


@cz.pipeline_step()
async def wait_io(data: Any, ctx: Any, seconds: float = 0.0) -> Any:
    cpu = await sleep_body(seconds)
    return data, {"cpu": cpu}


def _is_reference(spec: RunSpec) -> bool:
    return spec.variant.startswith("ml-")


def _framework(spec: RunSpec) -> str:
    """Name the package actually imported, and refuse to measure the wrong one."""
    from importlib import metadata
    from pathlib import Path

    here = Path(cz.__file__ or "").resolve()
    ours = Path(__file__).resolve().parents[2] / "crystallize"
    if _is_reference(spec):
        if ours in here.parents:
            raise RuntimeError("the reference interpreter imported this repository's crystallize")
        return f"crystallize-ml {metadata.version('crystallize-ml')}"
    if ours not in here.parents:
        raise RuntimeError("an installed crystallize shadows this repository's package")
    return f"crystallize {getattr(cz, '__version__', 'dev')} (this repository)"


def _pipeline(spec: RunSpec, step: Any) -> Any:
    # crystallize-ml 0.27 requires a Pipeline object; this package also takes a plain list.
    return cz.Pipeline([step]) if _is_reference(spec) else [step]


def _plugins(spec: RunSpec) -> list[Any]:
    plugins: list[Any] = [cz.ArtifactPlugin(root_dir=spec.data_dir)]
    if _is_reference(spec) and spec.workload.sleep_s:
        # crystallize-ml runs replicates one after another unless told otherwise.
        plugins.append(cz.AsyncExecution())
    return plugins


def _run_kwargs(spec: RunSpec) -> dict[str, Any]:
    if _is_reference(spec):
        return {"strategy": spec.strategy}
    executor: Any = spec.variant
    if spec.variant == "process-unbatched":
        executor = cz.ProcessExecutor(spec.cores, batching=False)
    return {"executor": executor, "max_workers": spec.cores, "strategy": spec.strategy}


def build(spec: RunSpec) -> list[Any]:
    w: Workload = spec.workload
    outputs: dict[str, Any] = {}
    experiments = []
    for node in w.nodes:
        if not node.parents:
            source = no_input()
        elif len(node.parents) == 1:
            source = outputs[node.parents[0]]
        else:
            aliases = {f"in{i}": outputs[p] for i, p in enumerate(node.parents)}
            source = cz.ExperimentInput(**aliases)
        produced = []
        if w.artifacts:
            art = cz.Artifact(f"{node.name}.bin")
            outputs[node.name] = art
            produced.append(art)
            step = produce(out=art, iters=w.iters)
        elif w.sleep_s:
            step = wait_io(seconds=w.sleep_s)
        else:
            step = compute(iters=w.iters)
        experiments.append(
            cz.Experiment(
                datasource=source,
                pipeline=_pipeline(spec, step),
                name=node.name,
                replicates=node.replicates,
                outputs=produced,
                plugins=_plugins(spec),
            )
        )
    return experiments


def _check(spec: RunSpec, results: dict[str, Any]) -> float:
    """Sum the recorded CPU metric, insisting that every unit of every node reported."""
    cpu = 0.0
    problems = []
    for node in spec.workload.nodes:
        res = results.get(node.name)
        if res is None:
            problems.append(f"{node.name}: no result")
            continue
        if res.errors:
            key, err = next(iter(res.errors.items()))
            problems.append(f"{node.name}: {len(res.errors)} unit error(s), {key}: {err!r}")
            continue
        values = list(res.metrics.baseline.metrics.get("cpu", []))
        if len(values) != node.replicates:
            problems.append(f"{node.name}: {len(values)} cpu values for {node.replicates} units")
        cpu += sum(values)
    if problems:
        shown = "; ".join(problems[:3])
        raise RuntimeError(f"{len(problems)} node(s) incomplete: {shown}")
    return cpu


def run(spec: RunSpec) -> Outcome:
    if spec.variant != "dask":
        return _run(spec, _run_kwargs(spec))
    # Imported here: the crystallize-ml reference interpreter runs this module and has no dask.
    from bench.systems.dask_graph import cluster_client

    with cluster_client(spec.cores) as (client, startup):
        kwargs = {**_run_kwargs(spec), "executor": cz.DaskExecutor(client)}
        outcome = _run(spec, kwargs)
    outcome.extra["startup_s"] = startup
    return outcome


def _run(spec: RunSpec, kwargs: dict[str, Any]) -> Outcome:
    framework = _framework(spec)
    experiments = build(spec)
    if len(experiments) == 1:
        # A lone experiment is what a user runs directly, without a graph.
        t0 = time.perf_counter()
        result = experiments[0].run(**kwargs)
        wall = time.perf_counter() - t0
        results = {experiments[0].name: result}
    else:
        graph = cz.ExperimentGraph.from_experiments(experiments)
        t0 = time.perf_counter()
        results = graph.run(**kwargs)
        wall = time.perf_counter() - t0
    return Outcome(wall, _check(spec, results), {"framework": framework})
