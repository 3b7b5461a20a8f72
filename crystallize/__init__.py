"""crystallize: reproducible computational experiments as a DAG, on every core of a machine."""

from pathlib import Path as _Path

from . import experiment as _experiment
from ._version import __version__ as __version__
from .errors import (
    ConfigError,
    ContextMutationError,
    CrystallizeError,
    ExperimentFailedError,
    GraphError,
    MissingArtifactError,
    PicklingError,
    ScaffoldError,
    UnitError,
)
from .experiment import Experiment, ExperimentGraph
from .model import (
    Artifact,
    ArtifactPlugin,
    BasePlugin,
    ConditionMetrics,
    DataSource,
    Event,
    ExperimentInput,
    ExperimentMetrics,
    FrozenContext,
    Hypothesis,
    HypothesisResult,
    LoggingPlugin,
    Pipeline,
    PipelineStep,
    Result,
    SeedPlugin,
    Treatment,
    data_source,
    hypothesis,
    pipeline_step,
    treatment,
    verifier,
)
from .running import DaskExecutor, Executor, InlineExecutor, ProcessExecutor, ThreadExecutor


# Folder configs build experiments, so the experiment layer cannot import them; this is the one
# place that hands their loaders down to Experiment.from_yaml and ExperimentGraph.from_yaml.
# Imported on first use: a program that builds its experiments in Python never reads YAML.
def _load_experiment(path: _Path) -> Experiment:
    from .config import load_experiment

    return load_experiment(path)


def _load_graph(path: _Path) -> list[Experiment]:
    from .config import load_graph

    return load_graph(path)


_experiment.register_folder_loaders(
    _experiment.FolderLoaders(experiment=_load_experiment, graph=_load_graph)
)

__all__ = [
    "Artifact",
    "ArtifactPlugin",
    "BasePlugin",
    "ConditionMetrics",
    "ConfigError",
    "ContextMutationError",
    "CrystallizeError",
    "DaskExecutor",
    "DataSource",
    "Event",
    "Executor",
    "Experiment",
    "ExperimentFailedError",
    "ExperimentGraph",
    "ExperimentInput",
    "ExperimentMetrics",
    "FrozenContext",
    "GraphError",
    "Hypothesis",
    "HypothesisResult",
    "InlineExecutor",
    "LoggingPlugin",
    "MissingArtifactError",
    "PicklingError",
    "Pipeline",
    "PipelineStep",
    "ProcessExecutor",
    "Result",
    "ScaffoldError",
    "SeedPlugin",
    "ThreadExecutor",
    "Treatment",
    "UnitError",
    "data_source",
    "hypothesis",
    "pipeline_step",
    "treatment",
    "verifier",
]
