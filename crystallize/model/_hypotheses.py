"""Hypotheses: compare each treatment with the baseline and rank the treatments."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..fingerprint import value_fingerprint

Metrics = Mapping[str, Sequence[Any]]


class Verifier:
    """``fn(baseline, treatment, **params) -> dict`` with its parameters bound."""

    def __init__(self, fn: Callable[..., Mapping[str, Any]], params: Mapping[str, Any]) -> None:
        self.fn = fn
        self.params = dict(params)
        self.name = fn.__name__

    def __call__(self, baseline: Metrics, treatment: Metrics) -> dict[str, Any]:
        return dict(self.fn(baseline, treatment, **self.params))


def verifier(fn: Callable[..., Mapping[str, Any]]) -> Callable[..., Verifier]:
    """Turn ``fn(baseline, treatment, **params)`` into a factory: ``welch_t(alpha=0.05)``.

    ``baseline`` and ``treatment`` are dicts ``{metric: [one value per replicate]}`` restricted
    to the hypothesis' metrics; ``fn`` returns a dict such as ``{"p_value": ..., ...}``.
    """

    def factory(**params: Any) -> Verifier:
        return Verifier(fn, params)

    factory.__name__ = fn.__name__
    factory.__qualname__ = fn.__qualname__
    factory.__doc__ = fn.__doc__
    factory.__wrapped__ = fn  # type: ignore[attr-defined]
    return factory


@dataclass
class HypothesisResult:
    """A hypothesis evaluated on one run: verifier output per treatment, and their ranking."""

    name: str
    metrics: list[str]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    ranking: list[str] = field(default_factory=list)


class Hypothesis:
    """A verifier applied to chosen metrics, plus a ranker ``fn(verifier_output) -> float``.

    Lower ranks first. Evaluated after every run and every resume of its experiment.
    """

    def __init__(
        self,
        *,
        verifier: Verifier | Callable[..., Mapping[str, Any]],
        metrics: str | Sequence[str] | None,
        ranker: Callable[[Mapping[str, Any]], float] | None = None,
        name: str | None = None,
    ) -> None:
        self.verifier = verifier
        self.metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
        self.ranker = ranker
        self.name = name or (ranker.__name__ if ranker is not None else "hypothesis")

    def evaluate(self, baseline: Metrics, treatments: Mapping[str, Metrics]) -> HypothesisResult:
        """Run the verifier for every treatment against the baseline and rank the outcomes."""
        out = HypothesisResult(self.name, list(self.metrics))
        for tname, tmetrics in treatments.items():
            names = self.metrics or sorted(set(baseline) & set(tmetrics))
            missing = [m for m in names if m not in baseline or m not in tmetrics]
            if missing:
                out.results[tname] = {"error": f"metric(s) {missing} not recorded"}
                continue
            # Seeded per (hypothesis, treatment) so resampling verifiers repeat exactly on resume.
            state = random.getstate()
            random.seed(value_fingerprint([self.name, tname]))
            try:
                out.results[tname] = dict(self.verifier(
                    {m: list(baseline[m]) for m in names}, {m: list(tmetrics[m]) for m in names}
                ))
            finally:
                random.setstate(state)
        if self.ranker is not None:
            scored = [
                (float(self.ranker(res)), t)
                for t, res in out.results.items()
                if "error" not in res
            ]
            out.ranking = [t for _, t in sorted(scored)]
        else:
            out.ranking = list(out.results)
        return out


def hypothesis(
    *,
    verifier: Verifier | Callable[..., Mapping[str, Any]],
    metrics: str | Sequence[str] | None = None,
    name: str | None = None,
) -> Callable[[Callable[[Mapping[str, Any]], float]], Hypothesis]:
    """Decorate a ranker ``fn(verifier_output) -> float`` to make a :class:`Hypothesis`."""

    def wrap(ranker: Callable[[Mapping[str, Any]], float]) -> Hypothesis:
        return Hypothesis(verifier=verifier, metrics=metrics, ranker=ranker, name=name)

    return wrap
