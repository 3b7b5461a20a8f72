"""Steps of the consumer experiment."""

from __future__ import annotations

import random
from typing import Any

from crystallize import FrozenContext, pipeline_step


@pipeline_step()
def inspect_summary(
    data: dict[str, Any], ctx: FrozenContext, factor: float = 1.0
) -> tuple[dict[str, Any], dict[str, float]]:
    """Score the upstream summary; ``data`` is ``{"producer_summary": <load_json output>}``."""
    summary = data["producer_summary"]
    rng = random.Random(ctx["seed"])
    score = summary["mean"] * factor + rng.gauss(0.0, 0.1)
    return summary, {"score": score, "upstream_n": summary["n"]}
