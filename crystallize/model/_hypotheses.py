"""Hypotheses: compare each treatment with the baseline and rank the treatments."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import HypothesisError, did_you_mean
from ..fingerprint import value_fingerprint
from ._parameters import check_types, dress_factory

Metrics = Mapping[str, Sequence[Any]]


class Verifier:
    """``fn(baseline, treatment, **params) -> dict`` with its parameters bound."""

    def __init__(self, fn: Callable[..., Mapping[str, Any]], params: Mapping[str, Any]) -> None:
        self.fn = fn
        self.params = dict(params)
        self.name = fn.__name__

    def parameter_names(self) -> set[str]:
        """Its parameters after ``baseline`` and ``treatment``."""
        return set(list(inspect.signature(self.fn).parameters)[2:])

    def __call__(self, baseline: Metrics, treatment: Metrics) -> dict[str, Any]:
        return dict(self.fn(baseline, treatment, **self.params))


def verifier(fn: Callable[..., Mapping[str, Any]]) -> Callable[..., Verifier]:
    """Turn ``fn(baseline, treatment, **params)`` into a factory: ``welch_t(alpha=0.05)``.

    ``baseline`` and ``treatment`` are dicts ``{metric: [one value per replicate]}`` restricted
    to the hypothesis' metrics; ``fn`` returns a dict such as ``{"p_value": ..., ...}``.
    """

    def factory(**params: Any) -> Verifier:
        check_types(fn, params, f"verifier {fn.__name__}()")
        return Verifier(fn, params)

    dress_factory(factory, fn)
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
        ranker: Callable[[Mapping[str, Any]], Any] | None = None,
        name: str | None = None,
    ) -> None:
        self.verifier = verifier
        self.metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
        self.ranker = ranker
        self.name = name or (ranker.__name__ if ranker is not None else "hypothesis")
        #: Where it was declared, for messages (a folder experiment's config file and key).
        self.source: str | None = None

    def describe(self) -> str:
        """``hypothesis 'name' (verifier 'v', declared in ...)``, for messages."""
        verifier_name = getattr(self.verifier, "name", None) or getattr(
            self.verifier, "__name__", repr(self.verifier))
        where = f", {self.source}" if self.source else ""
        return f"hypothesis {self.name!r} (verifier {verifier_name!r}{where})"

    def _call(self, role: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            raise HypothesisError(
                f"{self.describe()}: its {role} raised {type(exc).__name__}: {exc}"
            ) from exc

    def unrecorded(self, recorded: Collection[str]) -> str | None:
        """Why this hypothesis cannot be evaluated on runs that recorded ``recorded``, or None."""
        for metric in self.metrics:
            if metric not in recorded:
                return (
                    f"{self.describe()}: metric {metric!r} is recorded by no step"
                    f"{did_you_mean(metric, recorded) or '.'} Recorded metrics: "
                    f"{', '.join(sorted(recorded)) or 'none'}. Fix the metric's name, or "
                    f"record it in a step: ctx.record({metric!r}, value)"
                )
        return None

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
                out.results[tname] = dict(self._call(
                    "verifier", self.verifier,
                    {m: list(baseline[m]) for m in names}, {m: list(tmetrics[m]) for m in names},
                ))
            finally:
                random.setstate(state)
        if self.ranker is not None:
            scored = [
                (self._call("ranker", self.ranker, res), t)
                for t, res in out.results.items()
                if "error" not in res
            ]
            try:
                # One treatment needs no comparison, so a ranker's non-numeric value is fine.
                ordered = sorted(scored) if len(scored) > 1 else scored
            except TypeError as exc:
                raise HypothesisError(
                    f"{self.describe()}: its ranker returned values that cannot be ordered "
                    f"({', '.join(f'{t}: {s!r}' for s, t in scored)}); return a number (lower "
                    "ranks first)"
                ) from exc
            out.ranking = [t for _, t in ordered]
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
