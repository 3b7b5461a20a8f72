"""Steps of the producer experiment."""

from __future__ import annotations

from statistics import fmean, stdev
from typing import Any

from crystallize import Artifact, FrozenContext, pipeline_step


@pipeline_step()
def produce_summary(
    data: list[float], ctx: FrozenContext, summary: Artifact
) -> tuple[dict[str, Any], dict[str, float]]:
    """Summarise the measurements and publish them through the ``summary`` output."""
    stats = {"mean": fmean(data), "sd": stdev(data), "n": len(data)}
    summary.write(stats)  # encoded by outputs.dump_json into summary.json
    return stats, {"mean": stats["mean"], "sd": stats["sd"]}
