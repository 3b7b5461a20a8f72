"""Datasources of the producer experiment."""

from __future__ import annotations

import random

from crystallize import FrozenContext, data_source


@data_source
def load_numbers(ctx: FrozenContext, n: int = 200) -> list[float]:
    """``n`` noisy measurements drawn from the replicate's own seed (``n`` may come from ctx)."""
    rng = random.Random(ctx["seed"])
    return [rng.gauss(10.0, 2.0) for _ in range(n)]
