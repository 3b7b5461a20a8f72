"""The parts an experiment is made of: steps, datasources, artifacts, treatments, the context
they see, hypotheses, results, events and plugins.

Depends only on fingerprinting and the exceptions; the running layer builds on it.
"""

from ._artifacts import Artifact
from ._context import RESERVED_KEYS, FrozenContext, reserved_key_message
from ._datasources import DataSource, ExperimentInput, as_datasource, data_source
from ._events import Event
from ._hypotheses import Hypothesis, HypothesisResult, hypothesis, verifier
from ._parameters import analyse_signature
from ._plugins import ArtifactPlugin, BasePlugin, LoggingPlugin, SeedPlugin
from ._result import ConditionMetrics, ExperimentMetrics, Result
from ._settings import STRATEGIES, check_replicates, check_strategy
from ._steps import Pipeline, PipelineStep, pipeline_step
from ._treatments import BASELINE, Treatment, treatment
from ._unit_scope import unit_scope

__all__ = [
    "BASELINE",
    "RESERVED_KEYS",
    "STRATEGIES",
    "Artifact",
    "ArtifactPlugin",
    "BasePlugin",
    "ConditionMetrics",
    "DataSource",
    "Event",
    "ExperimentInput",
    "ExperimentMetrics",
    "FrozenContext",
    "Hypothesis",
    "HypothesisResult",
    "LoggingPlugin",
    "Pipeline",
    "PipelineStep",
    "Result",
    "SeedPlugin",
    "Treatment",
    "analyse_signature",
    "as_datasource",
    "check_replicates",
    "check_strategy",
    "data_source",
    "hypothesis",
    "pipeline_step",
    "reserved_key_message",
    "treatment",
    "unit_scope",
    "verifier",
]
