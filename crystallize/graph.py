"""The :class:`ExperimentGraph`: experiments as nodes, artifacts as edges (a networkx DAG)."""

from __future__ import annotations

import asyncio
import functools
import graphlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .experiment import Experiment
from .scheduler import RunOptions, Scheduler

if TYPE_CHECKING:
    import graphviz
    import networkx as nx

    from .events import Event
    from .executors import Executor
    from .result import Result
    from .treatments import Treatment


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
        from .config import load_graph

        return cls(*load_graph(Path(path)))

    # -- building ---------------------------------------------------------------------------
    def _add_node(self, experiment: Experiment) -> None:
        if not isinstance(experiment, Experiment):
            raise TypeError(f"ExperimentGraph takes Experiment objects, got {experiment!r}")
        if experiment.name is None:
            raise ValueError(
                f"unnamed experiment {experiment!r}: every experiment in a graph needs "
                "Experiment(..., name='...')"
            )
        if experiment.name in self._experiments:
            raise ValueError(
                f"two experiments are named {experiment.name!r}; names must be unique in a graph"
            )
        self._experiments[experiment.name] = experiment

    def add_experiment(self, experiment: Experiment) -> None:
        """Add an experiment; edges to and from it are inferred from its artifacts."""
        self._add_node(experiment)
        self._infer_edges()

    def add_dependency(self, downstream: Experiment | str, upstream: Experiment | str) -> None:
        """Make ``downstream`` run after ``upstream`` even without an artifact between them."""
        down = downstream if isinstance(downstream, str) else downstream.name
        up = upstream if isinstance(upstream, str) else upstream.name
        for name in (down, up):
            if name not in self._experiments:
                raise ValueError(f"no experiment named {name!r} in the graph; add it first")
        self._manual.add((up, down))
        try:
            self._infer_edges()
        except ValueError:
            self._manual.discard((up, down))
            self._infer_edges()
            raise

    def _infer_edges(self) -> None:
        producers: dict[int, str] = {}
        for name, exp in self.experiments.items():
            for art in exp.outputs.values():
                other = producers.setdefault(id(art), name)
                if other != name:
                    raise ValueError(
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
                    raise ValueError(
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
            raise ValueError(
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
    ) -> dict[str, Result]:
        """Run every experiment (upstreams first, independent ones concurrently).

        Returns ``{experiment_name: Result}``. Graph-level ``treatments``, ``replicates`` and
        ``strategy`` override the experiments' own. If any experiment fails, raises
        :class:`~crystallize.ExperimentFailedError` listing them, with all results attached.
        """
        _refuse_inside_event_loop()
        call = functools.partial(
            self.arun, treatments=treatments, replicates=replicates, strategy=strategy,
            executor=executor, max_workers=max_workers, on_event=on_event,
        )
        try:
            return anyio.run(call)
        except asyncio.CancelledError:
            # Only Ctrl-C cancels this run from outside. On Python 3.10, anyio's backport of
            # asyncio.Runner lets that out as CancelledError (it needs Task.uncancel, new in
            # 3.11); report it as the KeyboardInterrupt it was, as 3.11 and later do.
            raise KeyboardInterrupt from None

    async def arun(
        self, *, treatments: Iterable[Treatment] | None = None, replicates: int | None = None,
        strategy: str | None = None, executor: str | Executor | None = None,
        max_workers: int | None = None, on_event: Callable[[Event], Any] | None = None,
    ) -> dict[str, Result]:
        """:meth:`run` for async code: works in any running asyncio or trio event loop."""
        options = RunOptions.build(
            treatments=treatments, replicates=replicates, strategy=strategy,
            executor=executor, max_workers=max_workers, on_event=on_event,
        )
        return await Scheduler(self, options).run()

    # -- visualising ------------------------------------------------------------------------
    def visualize(
        self, path: str | Path | None = None, format: str = "svg", **options: Any
    ) -> graphviz.Digraph:
        """A Graphviz diagram of the graph; rendered to ``path`` when ``dot`` is installed."""
        from .visualize import visualize_graph

        return visualize_graph(self, path=path, format=format, **options)

    @classmethod
    def visualize_from_yaml(
        cls, config: str | Path, path: str | Path | None = None, format: str = "svg",
        **options: Any,
    ) -> graphviz.Digraph:
        """Load a folder graph with :meth:`from_yaml` and :meth:`visualize` it."""
        return cls.from_yaml(config).visualize(path=path, format=format, **options)


def _refuse_inside_event_loop() -> None:
    try:
        import sniffio

        library = sniffio.current_async_library()
    except Exception:
        try:
            asyncio.get_running_loop()
            library = "asyncio"
        except RuntimeError:
            return
    raise RuntimeError(
        f"run() was called inside a running {library} event loop, where it cannot block; "
        "use `await graph.arun(...)` (or `await experiment.arun(...)`) instead"
    )
