"""The :class:`Experiment`: datasource + pipeline + treatments + replicates."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifacts import Artifact
from .context import RESERVED_KEYS, reserved_key_message
from .datasources import DataSource, as_datasource
from .hypotheses import Hypothesis
from .plugins import ArtifactPlugin, BasePlugin, SeedPlugin
from .steps import Pipeline
from .treatments import BASELINE, Treatment

if TYPE_CHECKING:
    from .events import Event
    from .executors import Executor
    from .result import Result

STRATEGIES = ("rerun", "resume")


def check_strategy(strategy: str, where: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"{where}: strategy must be 'rerun' or 'resume', got {strategy!r}")
    return strategy


def check_replicates(replicates: Any, where: str) -> int:
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ValueError(f"{where}: replicates must be a whole number >= 1, got {replicates!r}")
    return replicates


def _as_treatments(treatments: Any, where: str) -> list[Treatment]:
    if treatments is None:
        return []
    if isinstance(treatments, Mapping):
        treatments = [
            v if isinstance(v, Treatment) else Treatment(k, v) for k, v in treatments.items()
        ]
    items = list(treatments)
    for t in items:
        if not isinstance(t, Treatment):
            raise TypeError(f"{where}: treatments must be Treatment objects, got {t!r}")
    names = [t.name for t in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}: treatment name(s) {dupes} given more than once")
    return items


class Experiment:
    """One experiment: every (condition x replicate) unit runs the pipeline on the datasource.

    ``treatments`` are named variations (the ``baseline`` condition always runs); each of the
    ``replicates`` repetitions gets its own deterministic seed. ``outputs`` are the artifacts it
    publishes (a list, or ``{alias: Artifact}``). ``strategy="resume"`` reloads a stored run when
    nothing it depends on has changed.
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
    ) -> None:
        where = f"experiment {name!r}" if name else "experiment"
        self.datasource = as_datasource(datasource, what=f"{where}: datasource")
        self.pipeline = pipeline if isinstance(pipeline, Pipeline) else Pipeline(pipeline)
        self.treatments = _as_treatments(treatments, where)
        self._replicates = None if replicates is None else check_replicates(replicates, where)
        self.outputs = self._as_outputs(outputs, where)
        self.hypotheses = list(hypotheses or [])
        self.plugins = list(plugins or [])
        self.strategy = check_strategy(strategy, where)
        self.initial_ctx = dict(initial_ctx or {})
        for key in self.initial_ctx:
            if key in RESERVED_KEYS:
                raise ValueError(reserved_key_message(key, f"{where}: initial_ctx"))
        self.description = description
        self._name: str | None = None
        self.name = name  # type: ignore[assignment]
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
        for step in self.pipeline.steps:
            for param in step.artifact_params:
                if isinstance(step.params.get(param), Artifact):
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
    def name(self) -> str | None:
        return self._name

    @name.setter
    def name(self, value: str | None) -> None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"experiment name must be a non-empty string, got {value!r}")
        if value is not None and ("/" in value or value.startswith(".")):
            raise ValueError(f"experiment name {value!r} is a directory name; avoid '/' and '.'")
        self._name = value
        for art in self.outputs.values():
            art.producer = value

    @property
    def replicates(self) -> int:
        return self._replicates or 1

    @replicates.setter
    def replicates(self, value: int) -> None:
        self._replicates = check_replicates(value, f"experiment {self.name!r}")

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

    def get_plugin(self, kind: type[BasePlugin]) -> BasePlugin | None:
        return next((p for p in self.plugins if isinstance(p, kind)), None)

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
        art.producer = self.name
        return art

    # -- running ----------------------------------------------------------------------------
    def _graph(self) -> Any:
        from .graph import ExperimentGraph

        if self.name is None:
            self.name = "experiment"
        return ExperimentGraph(self, _standalone=True)

    def run(
        self, *, treatments: Iterable[Treatment] | None = None, replicates: int | None = None,
        strategy: str | None = None, executor: str | Executor | None = None,
        max_workers: int | None = None, on_event: Callable[[Event], Any] | None = None,
    ) -> Result:
        """Run (or, under ``resume``, reload) this experiment and return its :class:`Result`.

        Upstream experiments whose artifacts it reads are not run; their newest complete
        versions in the store are used. Use :class:`~crystallize.ExperimentGraph` to run them too.
        """
        return self._graph().run(
            treatments=treatments, replicates=replicates, strategy=strategy, executor=executor,
            max_workers=max_workers, on_event=on_event,
        )[self.name]

    async def arun(
        self, *, treatments: Iterable[Treatment] | None = None, replicates: int | None = None,
        strategy: str | None = None, executor: str | Executor | None = None,
        max_workers: int | None = None, on_event: Callable[[Event], Any] | None = None,
    ) -> Result:
        """:meth:`run` for async code (any asyncio or trio event loop)."""
        results = await self._graph().arun(
            treatments=treatments, replicates=replicates, strategy=strategy, executor=executor,
            max_workers=max_workers, on_event=on_event,
        )
        return results[self.name]

    @classmethod
    def from_yaml(cls, path: str | Path) -> Experiment:
        """Load a folder experiment from its ``config.yaml`` (or the folder holding it)."""
        from .config import load_experiment

        return load_experiment(Path(path))

    def __repr__(self) -> str:
        return (
            f"Experiment(name={self.name!r}, steps={len(self.pipeline)}, "
            f"treatments={[t.name for t in self.treatments]}, replicates={self.replicates})"
        )


_DEFAULT_STORE = ArtifactPlugin()
_DEFAULT_SEED = SeedPlugin()
