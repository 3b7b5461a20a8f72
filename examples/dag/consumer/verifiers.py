"""Verifiers of the consumer's hypotheses, in pure Python (no SciPy needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import fmean, variance
from typing import Any

from crystallize import verifier


def _continued_fraction(a: float, b: float, x: float) -> float:
    # Lentz's method for the continued fraction of the incomplete beta function.
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
        + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, 1.0 - x) / b


def welch_test(baseline: Sequence[float], treatment: Sequence[float]) -> tuple[float, float]:
    """Welch's two-sided t-test: ``(t statistic, p-value)``."""
    if len(baseline) < 2 or len(treatment) < 2:
        return math.nan, 1.0
    va, vb = variance(baseline) / len(baseline), variance(treatment) / len(treatment)
    diff = fmean(treatment) - fmean(baseline)
    if va + vb == 0.0:
        return (math.copysign(math.inf, diff), 0.0) if diff else (0.0, 1.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(baseline) - 1) + vb**2 / (len(treatment) - 1))
    return t, incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


@verifier
def welch_t(
    baseline: dict[str, list[float]], treatment: dict[str, list[float]], alpha: float = 0.05
) -> dict[str, Any]:
    """Welch's t-test per metric; ``p_value`` is the largest, so significance needs them all."""
    tests = {m: welch_test(baseline[m], treatment[m]) for m in baseline}
    p_value = max(p for _, p in tests.values())
    return {
        "p_value": p_value,
        "significant": p_value < alpha,
        "t_statistic": {m: t for m, (t, _) in tests.items()},
    }
