"""crystallize: reproducible computational experiments as a DAG, on every core of a machine."""

from .artifacts import Artifact
from .context import FrozenContext
from .datasources import DataSource, ExperimentInput, data_source
from .errors import (
    ConfigError,
    ContextMutationError,
    ExperimentFailedError,
    PicklingError,
    UnitError,
)
from .events import Event
from .executors import DaskExecutor, Executor, InlineExecutor, ProcessExecutor, ThreadExecutor
from .experiment import Experiment
from .graph import ExperimentGraph
from .hypotheses import Hypothesis, HypothesisResult, hypothesis, verifier
from .plugins import ArtifactPlugin, BasePlugin, LoggingPlugin, SeedPlugin
from .result import ConditionMetrics, ExperimentMetrics, Result
from .steps import Pipeline, PipelineStep, pipeline_step
from .treatments import Treatment, treatment

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "ArtifactPlugin",
    "BasePlugin",
    "ConditionMetrics",
    "ConfigError",
    "ContextMutationError",
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
    "Hypothesis",
    "HypothesisResult",
    "InlineExecutor",
    "LoggingPlugin",
    "PicklingError",
    "Pipeline",
    "PipelineStep",
    "ProcessExecutor",
    "Result",
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
