"""Checks of the run settings an experiment, a graph and a folder config all accept."""

from __future__ import annotations

from typing import Any

STRATEGIES = ("rerun", "resume")


def check_strategy(strategy: str, where: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"{where}: strategy must be 'rerun' or 'resume', got {strategy!r}")
    return strategy


def check_replicates(replicates: Any, where: str) -> int:
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ValueError(f"{where}: replicates must be a whole number >= 1, got {replicates!r}")
    return replicates
