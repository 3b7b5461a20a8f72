"""The parts an experiment is made of: steps, datasources, artifacts, treatments, the context
they see, hypotheses, results, events and plugins.

Depends only on fingerprinting and the exceptions; the running layer builds on it.
"""

from ._analysis import uses_global_rng
from ._artifacts import Artifact
from ._context import RESERVED_KEYS, FrozenContext, reserved_key_message
from ._datasources import DataSource, ExperimentInput, as_datasource, data_source
from ._events import Event
from ._hypotheses import Hypothesis, HypothesisResult, Verifier, hypothesis, verifier
from ._parameters import analyse_signature, is_artifact, type_mismatch
from ._plugins import ArtifactPlugin, BasePlugin, LoggingPlugin, SeedPlugin
from ._result import ConditionMetrics, ExperimentMetrics, Result
from ._settings import (
    MAX_CONFIG_BYTES,
    MAX_REPLICATES,
    MAX_YAML_NODES,
    STRATEGIES,
    Limit,
    check_replicates,
    check_retries,
    check_strategy,
)
from ._steps import Pipeline, PipelineStep, check_timeout, pipeline_step
from ._treatments import BASELINE, Treatment, treatment
from ._unit_scope import unit_scope

__all__ = [
    "BASELINE",
    "MAX_CONFIG_BYTES",
    "MAX_REPLICATES",
    "MAX_YAML_NODES",
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
    "Limit",
    "LoggingPlugin",
    "Pipeline",
    "PipelineStep",
    "Result",
    "SeedPlugin",
    "Treatment",
    "Verifier",
    "analyse_signature",
    "as_datasource",
    "check_replicates",
    "check_retries",
    "check_strategy",
    "check_timeout",
    "data_source",
    "hypothesis",
    "is_artifact",
    "pipeline_step",
    "reserved_key_message",
    "treatment",
    "type_mismatch",
    "unit_scope",
    "uses_global_rng",
    "verifier",
]
