"""What a user builds and runs: the :class:`Experiment` and the :class:`ExperimentGraph` of them.

Both live in one module because each needs the other: a graph holds experiments, and a lone
``Experiment.run()`` is the run of a one-node graph.
"""

from __future__ import annotations

import asyncio
import copy
import graphlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import GraphError
from ..model import (
    BASELINE,
    RESERVED_KEYS,
    Artifact,
    ArtifactPlugin,
    BasePlugin,
    DataSource,
    Hypothesis,
    Pipeline,
    SeedPlugin,
    Treatment,
    as_datasource,
    check_replicates,
    check_retries,
    check_strategy,
    check_timeout,
    reserved_key_message,
)
from ..running import RunOptions, Scheduler
from ..store import path_name_problem
from ._arguments import as_treatments, default_name
from ._event_loop import refuse_inside_event_loop
from ._folders import folder_loaders

if TYPE_CHECKING:
    import graphviz
    import networkx as nx

    from ..model import Event, Result
    from ..running import Executor


class Experiment:
    """One experiment: every (condition x replicate) unit runs the pipeline on the datasource.

    ``treatments`` are named variations (the ``baseline`` condition always runs); each of the
    ``replicates`` repetitions gets its own deterministic seed. ``outputs`` are the artifacts it
    publishes (a list, or ``{alias: Artifact}``). ``strategy="resume"`` reloads a stored run when
    nothing it depends on has changed. A unit that fails is run again up to ``retries`` times
    (for flaky work); its outcome says how many attempts it took.
    """

    def __init__(
        self,
        datasource: DataSource | Callable[..., DataSource],
        pipeline: Pipeline | Sequence[Any],
        *,
        name: str | None = None,
        treatments: Iterable[Treatment] | Mapping[str, Any] | None = None,
        replicates: int | None = None,
        outputs: Iterable[Artifact] | Mapping[str, Artifact] | None = None,
        hypotheses: Iterable[Hypothesis] | None = None,
        plugins: Iterable[BasePlugin] | None = None,
        strategy: str = "rerun",
        initial_ctx: Mapping[str, Any] | None = None,
        description: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> None:
        where = f"experiment {name!r}" if name else "experiment"
        self.datasource = as_datasource(datasource, what=f"{where}: datasource")
        self.pipeline = pipeline if isinstance(pipeline, Pipeline) else Pipeline(pipeline)
        self.treatments = as_treatments(treatments, where)
        for t in self.treatments:
            mismatch = t.type_mismatch(self.pipeline.steps)
            if mismatch:
                raise TypeError(
                    f"{where}: treatment {t.name!r} sets a value step {mismatch[0]!r} cannot "
                    f"take: {mismatch[2]}"
                )
        self._replicates = None if replicates is None else check_replicates(replicates, where)
        self.outputs = self._as_outputs(outputs, where)
        self.hypotheses = list(hypotheses or [])
        self.plugins = list(plugins or [])
        self.strategy = check_strategy(strategy, where)
        self.retries = check_retries(retries, where)
        self.initial_ctx = dict(initial_ctx or {})
        for key in self.initial_ctx:
            if key in RESERVED_KEYS:
                raise ValueError(reserved_key_message(key, f"{where}: initial_ctx"))
        self.description = description
        #: The most seconds one unit may take; a unit still running then fails with
        #: :class:`TimeoutError` (in a process, its worker is stopped), the others go on.
        self.timeout = check_timeout(timeout, where)
        self._name = ""
        self.name = name
        self._check_artifact_params(where)
        for plugin in self.plugins:
            plugin.init_hook(self)

    # -- construction helpers ---------------------------------------------------------------
    @staticmethod
    def _as_outputs(outputs: Any, where: str) -> dict[str, Artifact]:
        if outputs is None:
            return {}
        pairs = outputs.items() if isinstance(outputs, Mapping) else [(a.name, a) for a in outputs]
        result: dict[str, Artifact] = {}
        for alias, art in pairs:
            if not isinstance(art, Artifact):
                raise TypeError(f"{where}: outputs must be Artifact objects, got {art!r}")
            if alias in result:
                raise ValueError(f"{where}: two outputs are called {alias!r}")
            result[alias] = art
        return result

    def _check_artifact_params(self, where: str) -> None:
        writers: dict[int, str] = {}
        for step in self.pipeline.steps:
            for param in step.artifact_params:
                given = step.params.get(param)
                art = given if isinstance(given, Artifact) else self._find_output(param)
                if art is not None:
                    other = writers.setdefault(id(art), step.fn.__name__)
                    if other != step.fn.__name__:
                        raise ValueError(
                            f"{where}: output {art.name!r} is written by two steps, {other!r} "
                            f"and {step.fn.__name__!r}; consumers would read only one of the "
                            "files. Give each step its own output"
                        )
                    continue
                if self._find_output(param) is None:
                    raise ValueError(
                        f"{where}: step {step.fn.__name__!r} parameter {param!r} is annotated "
                        f"Artifact but no output is called {param!r}; outputs: "
                        f"{sorted(self.outputs) or 'none'}. Add Artifact({param!r}...) to "
                        f"outputs or pass one: {step.fn.__name__}({param}=artifact)"
                    )

    def _find_output(self, alias: str) -> Artifact | None:
        if alias in self.outputs:
            return self.outputs[alias]
        for art in self.outputs.values():
            if art.name == alias or Path(art.name).stem == alias:
                return art
        return None

    def output_for(self, alias: str) -> Artifact:
        """The output artifact a step parameter called ``alias`` writes to."""
        art = self._find_output(alias)
        if art is None:
            raise KeyError(f"{self.name}: no output {alias!r}; outputs: {sorted(self.outputs)}")
        return art

    # -- properties -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str | None) -> None:
        #: True when the name was derived from the datasource and steps (no ``name=`` given)
        self.named_by_default = value is None
        if value is None:
            value = default_name(self.datasource, self.pipeline)
        elif not isinstance(value, str) or not value.strip():
            raise ValueError(f"experiment name must be a non-empty string, got {value!r}")
        problem = path_name_problem(value)
        if problem:
            raise ValueError(
                f"experiment name {value!r} {problem}; it names the experiment's folder in the "
                "store. Rename the experiment"
            )
        self._name = value
        for art in self.outputs.values():
            art.producer = value
            # A consumer run on its own finds this producer's runs where this producer keeps them.
            art.producer_root = self.store_plugin.root_dir

    @property
    def replicates(self) -> int:
        return self._replicates or 1

    @replicates.setter
    def replicates(self, value: int) -> None:
        self._replicates = check_replicates(value, f"experiment {self.name!r}")

    @property
    def unit_timeout(self) -> float | None:
        """The most seconds a unit may take: :attr:`timeout`, or, if every step has a timeout,
        their sum; None if a unit may run for ever."""
        steps = [s.timeout for s in self.pipeline.steps]
        total = None if None in steps else sum(t for t in steps if t is not None)
        return min((t for t in (self.timeout, total) if t is not None), default=None)

    @property
    def treatment_map(self) -> dict[str, Treatment]:
        return {t.name: t for t in self.treatments}

    @property
    def conditions(self) -> list[str]:
        """``baseline`` first, then each treatment (a treatment named baseline modifies it)."""
        return [BASELINE] + [t.name for t in self.treatments if t.name != BASELINE]

    @property
    def store_plugin(self) -> ArtifactPlugin:
        return next((p for p in self.plugins if isinstance(p, ArtifactPlugin)), _DEFAULT_STORE)

    @property
    def seed_plugin(self) -> SeedPlugin:
        return next((p for p in self.plugins if isinstance(p, SeedPlugin)), _DEFAULT_SEED)

    def consumed_artifacts(self) -> list[Artifact]:
        return self.datasource.artifacts()

    def with_overrides(
        self, *, treatments: list[Treatment] | None = None, replicates: int | None = None,
        strategy: str | None = None,
    ) -> Experiment:
        """A shallow copy configured for one run; the original is left as it was."""
        clone = copy.copy(self)
        if treatments is not None:
            clone.treatments = treatments
        if replicates is not None:
            clone._replicates = replicates
        if strategy is not None:
            clone.strategy = strategy
        return clone

    def artifact_datasource(
        self, step: str | None = None, name: str | None = None,
        loader: Callable[[Path], Any] | None = None,
    ) -> Artifact:
        """A datasource reading this experiment's artifact ``name`` (the older explicit form)."""
        if name is None:
            raise ValueError(f"{self.name}: artifact_datasource needs name='<file name>'")
        declared = self._find_output(name)
        art = Artifact(name, loader=loader or (declared.loader if declared else None), step=step)
        art.producer, art.producer_root = self.name, self.store_plugin.root_dir
        return art

    # -- running ----------------------------------------------------------------------------
    def _alone(self) -> tuple[ExperimentGraph, str]:
        """This experiment as a one-node graph, and its name there."""
        return ExperimentGraph(self, _standalone=True), self.name

    def run(
        self, *, treatments: Iterable[Treatment] | None = None, replicates: int | None = None,
        strategy: str | None = None, executor: str | Executor | None = None,
        max_workers: int | None = None, on_event: Callable[[Event], Any] | None = None,
    ) -> Result:
        """Run (or, under ``resume``, reload) this experiment and return its :class:`Result`.

        Upstream experiments whose artifacts it reads are not run; their newest complete
        versions in the store are used. Use :class:`~crystallize.ExperimentGraph` to run them too.
        """
        graph, name = self._alone()
        return graph.run(
            treatments=treatments, replicates=replicates, strategy=strategy, executor=executor,
            max_workers=max_workers, on_event=on_event,
        )[name]

    async def arun(
        self, *, treatments: Iterable[Treatment] | None = None, replicates: int | None = None,
        strategy: str | None = None, executor: str | Executor | None = None,
        max_workers: int | None = None, on_event: Callable[[Event], Any] | None = None,
    ) -> Result:
        """:meth:`run` for async code (any asyncio or trio event loop)."""
        graph, name = self._alone()
        results = await graph.arun(
            treatments=treatments, replicates=replicates, strategy=strategy, executor=executor,
            max_workers=max_workers, on_event=on_event,
        )
        return results[name]

    @classmethod
    def from_yaml(cls, path: str | Path) -> Experiment:
        """Load a folder experiment from its ``config.yaml`` (or the folder holding it)."""
        return folder_loaders().experiment(Path(path))

    def __repr__(self) -> str:
        return (
            f"Experiment(name={self.name!r}, steps={len(self.pipeline)}, "
            f"treatments={[t.name for t in self.treatments]}, replicates={self.replicates})"
        )


_DEFAULT_STORE = ArtifactPlugin()
_DEFAULT_SEED = SeedPlugin()


class ExperimentGraph:
    """A DAG of experiments; edges come from the artifacts each experiment consumes.

    :attr:`graph` exposes it as a ``networkx.DiGraph`` for analysis; the scheduler itself works
    on plain adjacency sets (importing networkx costs more than resuming a 200-node graph).

    Build it from experiments (``ExperimentGraph(a, b, c)`` or :meth:`from_experiments`), from a
    folder of experiments (:meth:`from_yaml`), or by hand with :meth:`add_experiment` and
    :meth:`add_dependency`. Invalid graphs raise :class:`ValueError` naming the parts: a cycle,
    an artifact nobody produces, an artifact produced twice, duplicate or missing names.
    """

    def __init__(self, *experiments: Experiment | Iterable[Experiment], _standalone: bool = False):
        self._manual: set[tuple[str, str]] = set()
        self._experiments: dict[str, Experiment] = {}
        self._parents: dict[str, list[str]] = {}
        self._children: dict[str, list[str]] = {}
        self._order: list[str] | None = None
        # A lone Experiment.run() may read artifacts of producers outside the graph (from disk).
        self._standalone = _standalone
        flat: list[Experiment] = []
        for item in experiments:
            if isinstance(item, Experiment):
                flat.append(item)
            else:
                flat.extend(item)
        for exp in flat:
            self._add_node(exp)
        self._infer_edges()

    @classmethod
    def from_experiments(cls, experiments: Iterable[Experiment]) -> ExperimentGraph:
        return cls(*experiments)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentGraph:
        """Load folder experiments: a ``config.yaml``, an experiment folder, or a root of them.

        For a single experiment, the experiments it depends on (searched among its sibling
        folders) are loaded too, so running the graph runs prerequisites first.
        """
        return cls(*folder_loaders().graph(Path(path)))

    # -- building ---------------------------------------------------------------------------
    def _add_node(self, experiment: Experiment) -> None:
        if not isinstance(experiment, Experiment):
            raise TypeError(f"ExperimentGraph takes Experiment objects, got {experiment!r}")
        other = self._experiments.get(experiment.name)
        if other is not None:
            unnamed = experiment.named_by_default or other.named_by_default
            raise GraphError(
                f"two experiments are named {experiment.name!r}; names must be unique in a graph"
                + ("; an unnamed experiment is named after its datasource and steps: give them "
                   "distinct names with Experiment(..., name='...')" if unnamed else "")
            )
        self._experiments[experiment.name] = experiment

    def add_experiment(self, experiment: Experiment) -> None:
        """Add an experiment; edges to and from it are inferred from its artifacts."""
        self._add_node(experiment)
        self._infer_edges()

    def add_dependency(self, downstream: Experiment | str, upstream: Experiment | str) -> None:
        """Make ``downstream`` run after ``upstream`` even without an artifact between them."""
        down, up = self._member(downstream), self._member(upstream)
        self._manual.add((up, down))
        try:
            self._infer_edges()
        except GraphError:
            self._manual.discard((up, down))
            self._infer_edges()
            raise

    def _member(self, node: Experiment | str) -> str:
        name = node if isinstance(node, str) else node.name
        if name is None or name not in self._experiments:
            raise GraphError(f"no experiment named {name!r} in the graph; add it first")
        return name

    def _infer_edges(self) -> None:
        producers: dict[int, str] = {}
        for name, exp in self.experiments.items():
            for art in exp.outputs.values():
                other = producers.setdefault(id(art), name)
                if other != name:
                    raise GraphError(
                        f"artifact {art.name!r} is produced twice: by {other!r} and {name!r}; "
                        "give each experiment its own Artifact object"
                    )
        edges: list[tuple[str, str]] = sorted(self._manual)
        for name, exp in self.experiments.items():
            for art in exp.consumed_artifacts():
                producer = producers.get(id(art))
                if producer is None and art.producer in self._experiments:
                    producer = art.producer
                if producer is None:
                    if self._standalone:
                        continue
                    fix = (f"add experiment {art.producer!r} to the graph" if art.producer else
                           "list it in the outputs=[...] of the experiment that writes it")
                    raise GraphError(
                        f"experiment {name!r} consumes artifact {art!r} but no experiment in "
                        f"the graph produces it; {fix}"
                    )
                edges.append((producer, name))
        parents: dict[str, list[str]] = {n: [] for n in self._experiments}
        children: dict[str, list[str]] = {n: [] for n in self._experiments}
        for up, down in edges:
            if up not in parents[down]:
                parents[down].append(up)
                children[up].append(down)
        try:
            order = list(graphlib.TopologicalSorter(parents).static_order())
        except graphlib.CycleError as exc:
            cycle = list(reversed(exc.args[1]))
            raise GraphError(
                f"the experiments form a cycle: {' -> '.join(cycle)}; an experiment graph must "
                "be a DAG (no experiment may depend, directly or not, on itself)"
            ) from None
        self._parents, self._children, self._order = parents, children, order

    # -- reading ----------------------------------------------------------------------------
    @property
    def experiments(self) -> dict[str, Experiment]:
        """``{name: Experiment}`` in insertion order."""
        return self._experiments

    @property
    def graph(self) -> nx.DiGraph:
        """The graph as a ``networkx.DiGraph`` (nodes are names, with ``experiment`` data)."""
        import networkx as nx

        g = nx.DiGraph()
        for name, exp in self._experiments.items():
            g.add_node(name, experiment=exp)
        g.add_edges_from(self.edges)
        return g

    @property
    def edges(self) -> list[tuple[str, str]]:
        """``(upstream, downstream)`` pairs."""
        return [(up, down) for down, ups in self._parents.items() for up in ups]

    def upstream(self, name: str) -> list[str]:
        return list(self._parents[name])

    def downstream(self, name: str) -> list[str]:
        return list(self._children[name])

    def with_upstream(self, names: Iterable[str]) -> set[str]:
        """``names`` and every experiment they depend on, directly or not."""
        return self._closure(names, self._parents)

    def with_downstream(self, names: Iterable[str]) -> set[str]:
        """``names`` and every experiment that depends on them, directly or not."""
        return self._closure(names, self._children)

    def _closure(self, names: Iterable[str], links: dict[str, list[str]]) -> set[str]:
        todo = list(names)
        unknown = [n for n in todo if n not in self._experiments]
        if unknown:
            raise GraphError(
                f"no experiment named {unknown[0]!r} in the graph; its experiments: "
                f"{', '.join(self._experiments)}"
            )
        seen: set[str] = set()
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += links[name]
        return seen

    def select(self, names: Iterable[str]) -> ExperimentGraph:
        """The part of the graph that running ``names`` needs: them and their prerequisites."""
        keep = self.with_upstream(names)
        part = ExperimentGraph(*(e for n, e in self._experiments.items() if n in keep),
                               _standalone=self._standalone)
        for up, down in sorted(self._manual):
            if down in keep:
                part.add_dependency(down, up)
        return part

    def topological_order(self) -> list[str]:
        """Every experiment after all of its upstreams."""
        return list(self._order or [])

    def __contains__(self, name: object) -> bool:
        return name in self._experiments

    def __len__(self) -> int:
        return len(self._experiments)

    def __repr__(self) -> str:
        return f"ExperimentGraph({list(self._experiments)}, edges={self.edges})"

    # -- running ----------------------------------------------------------------------------
    def run(
        self, *, treatments: Iterable[Treatment] | None = None, replicates: int | None = None,
        strategy: str | None = None, executor: str | Executor | None = None,
        max_workers: int | None = None, on_event: Callable[[Event], Any] | None = None,
        force: Iterable[str] = (), fail_fast: bool = False,
    ) -> dict[str, Result]:
        """Run every experiment (upstreams first, independent ones concurrently).

        Returns ``{experiment_name: Result}``. Graph-level ``treatments``, ``replicates`` and
        ``strategy`` override the experiments' own. The experiments named in ``force``, and
        everything downstream of them, rerun whatever their strategy. If any experiment fails,
        raises :class:`~crystallize.ExperimentFailedError` listing them, with all results
        attached; by default every branch that can still run does, while ``fail_fast=True``
        stops the run at the first failed unit.
        """
        refuse_inside_event_loop()
        options = RunOptions.build(
            treatments=treatments, replicates=replicates, strategy=strategy,
            executor=executor, max_workers=max_workers, on_event=on_event, force=force,
            fail_fast=fail_fast,
        )
        scheduler = Scheduler(self, options)
        results = scheduler.settle()  # a resume where nothing changed needs no event loop
        if results is not None:
            return results
        try:
            return anyio.run(scheduler.run)
        except asyncio.CancelledError:
            # Only Ctrl-C cancels this run from outside. On Python 3.10, anyio's backport of
            # asyncio.Runner lets that out as CancelledError (it needs Task.uncancel, new in
            # 3.11); report it as the KeyboardInterrupt it was, as 3.11 and later do.
            raise KeyboardInterrupt from None

    async def arun(
        self, *, treatments: Iterable[Treatment] | None = None, replicates: int | None = None,
        strategy: str | None = None, executor: str | Executor | None = None,
        max_workers: int | None = None, on_event: Callable[[Event], Any] | None = None,
        force: Iterable[str] = (), fail_fast: bool = False,
    ) -> dict[str, Result]:
        """:meth:`run` for async code: works in any running asyncio or trio event loop."""
        options = RunOptions.build(
            treatments=treatments, replicates=replicates, strategy=strategy,
            executor=executor, max_workers=max_workers, on_event=on_event, force=force,
            fail_fast=fail_fast,
        )
        return await Scheduler(self, options).run()

    # -- visualising ------------------------------------------------------------------------
    def visualize(
        self, path: str | Path | None = None, format: str = "svg", **options: Any
    ) -> graphviz.Digraph:
        """A Graphviz diagram of the graph; rendered to ``path`` when ``dot`` is installed."""
        from ..render import visualize_graph

        return visualize_graph(self, path=path, format=format, **options)

    @classmethod
    def visualize_from_yaml(
        cls, config: str | Path, path: str | Path | None = None, format: str = "svg",
        **options: Any,
    ) -> graphviz.Digraph:
        """Load a folder graph with :meth:`from_yaml` and :meth:`visualize` it."""
        return cls.from_yaml(config).visualize(path=path, format=format, **options)
