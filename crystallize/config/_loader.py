"""Loading folder experiments and the upstream experiments they read from."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..experiment import Experiment
from ._builder import Builder
from ._files import CONFIG_FILE, ExperimentConfig, display_path, experiment_configs, read_config


# -- loading graphs ---------------------------------------------------------------------------
class GraphLoader:
    """Loads experiments and, on demand, the upstream experiments they reference.

    Each folder is loaded once, so every consumer of an output holds the producer's very
    :class:`Artifact` object (graph edges are inferred by identity). :attr:`order` lists the
    loaded experiments, upstreams before their consumers.
    """

    def __init__(self) -> None:
        self.loaded: dict[Path, Experiment] = {}
        self.order: list[Experiment] = []
        self.sources: dict[str, Path] = {}
        self._loading: list[tuple[Path, str]] = []

    def load(
        self, path: Path, *, needed_by: tuple[ExperimentConfig, str] | None = None
    ) -> Experiment:
        key = path.resolve()
        if key in self.loaded:
            return self.loaded[key]
        for index, (loading, _) in enumerate(self._loading):
            if loading == key:
                names = [n for _, n in self._loading[index:]] + [self._loading[index][1]]
                assert needed_by is not None
                config, ref_key = needed_by
                raise config.error(
                    ref_key, f"the experiments depend on each other in a cycle: "
                    f"{' -> '.join(names)}",
                    "An experiment graph must be a DAG: remove one of these references",
                )
        config = read_config(path)
        name = config.name
        self._loading.append((key, name))
        try:
            experiment = Builder(config, self).build()
        finally:
            self._loading.pop()
        other = self.sources.setdefault(name, key)
        if other != key:
            raise config.error(
                "name", f"experiment name {name!r} is also used by {display_path(other)}",
                "Names must be unique in a graph: rename one of them",
            )
        self.loaded[key] = experiment
        self.order.append(experiment)
        return experiment


def load_experiment(path: Path) -> Experiment:
    """Load the folder experiment at ``path`` (its ``config.yaml`` or the folder holding it).

    Upstream experiments it references are read to resolve their outputs, but only this
    experiment is returned; run it with :class:`~crystallize.ExperimentGraph.from_yaml` to run
    its prerequisites too.

    :raises ConfigError: for any mistake in the config or its modules, or a missing path
    """
    path = Path(path)
    if path.is_dir():
        if not (path / CONFIG_FILE).exists():
            raise ConfigError(
                f"no {CONFIG_FILE} in this folder. Pass an experiment folder; for a folder of "
                "experiments use ExperimentGraph.from_yaml",
                file=display_path(path),
            )
        path = path / CONFIG_FILE
    return GraphLoader().load(path)


def load_graph(path: Path) -> list[Experiment]:
    """Load the experiments ``path`` designates, upstreams first.

    ``path`` is a config file or an experiment folder (that experiment plus every experiment it
    depends on, transitively, searched among the sibling folders of its folder), or an
    experiments root (every experiment folder directly under it).

    :raises ConfigError: for any mistake in a config or its modules, a missing path, a cycle
        between folders, or two experiments with one name
    """
    loader = GraphLoader()
    for config in experiment_configs(Path(path)):
        loader.load(config)
    return loader.order
