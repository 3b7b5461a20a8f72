"""The outcome of one experiment run (or resume)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._hypotheses import HypothesisResult
from ._treatments import BASELINE

if TYPE_CHECKING:
    from ..store import ConditionRecord


@dataclass
class ConditionMetrics:
    """Metrics of one condition.

    ``metrics[name]`` lists the values of the replicates that recorded ``name``, in replicate
    order: a failed replicate contributes nothing, so ``mean()`` and verifiers never meet a
    ``None``. ``by_replicate[r][name]`` holds the same values keyed by replicate, for paired
    analyses (a replicate that recorded nothing maps to ``{}``).
    """

    metrics: dict[str, list[Any]] = field(default_factory=dict)
    by_replicate: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_replicates(cls, recorded: Sequence[Mapping[str, Any]]) -> ConditionMetrics:
        """From what each replicate recorded, in replicate order."""
        by_replicate = {r: dict(values) for r, values in enumerate(recorded)}
        names = list(dict.fromkeys(n for values in recorded for n in values))
        metrics = {n: [values[n] for values in recorded if n in values] for n in names}
        return cls(metrics, by_replicate)


@dataclass
class ExperimentMetrics:
    """``baseline`` and ``treatments[name]`` metrics, plus evaluated hypotheses."""

    baseline: ConditionMetrics = field(default_factory=ConditionMetrics)
    treatments: dict[str, ConditionMetrics] = field(default_factory=dict)
    hypotheses: list[HypothesisResult] = field(default_factory=list)

    def condition(self, name: str) -> ConditionMetrics:
        return self.baseline if name == BASELINE else self.treatments[name]


@dataclass(repr=False)
class Result:
    """What one experiment produced.

    - ``metrics.baseline.metrics[name]`` / ``metrics.treatments[t].metrics[name]``: the values
      of the replicates that recorded it, in replicate order (``.by_replicate[r]`` keeps the
      replicate of each);
    - ``errors``: ``{"<condition>_rep_<r>": exception}`` for units that failed, each carrying
      the worker's traceback (:func:`~crystallize.errors.unit_traceback`);
    - ``warnings``: what the run did that a reader of its numbers must know (a treatment read an
      upstream's baseline, a treatment key no unit read, a global RNG under threads);
    - ``artifacts``: ``{file_name: {condition: [path per replicate]}}``;
    - ``provenance``: fingerprint parts, seeds, upstream versions, timings;
    - ``executed`` / ``resumed``: whether units ran in this call or it was loaded from the store
      (a partial resume is executed, with the reused conditions listed in ``reused``);
    - ``version`` / ``version_dir``: the store version it belongs to;
    - ``reason``: under ``resume``, why it was (re)run or that it was reused.
    """

    experiment: str
    metrics: ExperimentMetrics
    errors: dict[str, BaseException] = field(default_factory=dict)
    artifacts: dict[str, dict[str, list[Path | None]]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    executed: bool = True
    version: int | None = None
    version_dir: Path | None = None
    reason: str | None = None
    replicates: int = 0
    reused: list[str] = field(default_factory=list)
    failed: bool = False
    warnings: list[str] = field(default_factory=list)
    #: per unit (``{"<condition>_rep_<r>": reason}``), e.g. reused from ``v3``, or rerun because
    #: an upstream artifact it read changed
    unit_reasons: dict[str, str] = field(default_factory=dict)
    #: per condition, its stored record (units with metrics, artifacts, errors)
    records: dict[str, ConditionRecord] = field(default_factory=dict, repr=False)

    @property
    def resumed(self) -> bool:
        return not self.executed

    def __repr__(self) -> str:
        # The full dataclass repr (fingerprints, timings, every value) buries what a user
        # looks for at a prompt; the fields themselves hold all of it.
        how = "failed" if self.failed else (
            f"executed -> v{self.version}" if self.executed else f"resumed v{self.version}")
        names = sorted({m for c in self.conditions for m in self.metrics.condition(c).metrics})
        return (
            f"<Result {self.experiment!r}: {how}, {self.replicates} replicate(s), "
            f"conditions {self.conditions}, metrics {names}, {len(self.errors)} error(s)>"
        )

    @property
    def conditions(self) -> list[str]:
        return [BASELINE, *self.metrics.treatments]

    def get_hypothesis(self, name: str) -> HypothesisResult | None:
        """The evaluated hypothesis called ``name``, or None."""
        return next((h for h in self.metrics.hypotheses if h.name == name), None)

    def artifact_path(self, name: str, condition: str = BASELINE, replicate: int = 0) -> Path:
        """Path of artifact ``name`` written by ``condition``'s replicate ``replicate``."""
        try:
            path = self.artifacts[name][condition][replicate]
        except (KeyError, IndexError):
            raise KeyError(
                f"{self.experiment}: no artifact {name!r} for {condition} replicate {replicate}; "
                f"artifacts: {sorted(self.artifacts)}"
            ) from None
        if path is None:
            raise KeyError(
                f"{self.experiment}: {condition} replicate {replicate} wrote no {name!r}"
            )
        return path
