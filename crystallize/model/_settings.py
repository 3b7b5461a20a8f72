"""Checks of the run settings an experiment, a graph and a folder config all accept, and the
caps that turn an absurd input into a clear error instead of a hang or an exhausted machine.

Each cap has a default far above any real experiment and an environment variable that raises
(or lowers) it; the value is read when it is checked, so a test or a script may change it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import LimitError

STRATEGIES = ("rerun", "resume")


def check_strategy(strategy: str, where: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"{where}: strategy must be 'rerun' or 'resume', got {strategy!r}")
    return strategy


def check_retries(retries: Any, where: str) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"{where}: retries must be a whole number >= 0, got {retries!r}")
    return retries


def check_replicates(replicates: Any, where: str) -> int:
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ValueError(f"{where}: replicates must be a whole number >= 1, got {replicates!r}")
    MAX_REPLICATES.check(replicates, f"{where}: replicates")
    return replicates


@dataclass(frozen=True)
class Limit:
    """One cap: its name in messages, its environment variable and its default."""

    what: str
    env: str
    default: int

    @property
    def value(self) -> int:
        raw = os.environ.get(self.env)
        if raw is None:
            return self.default
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise LimitError(f"{self.env}={raw!r}: expected a whole number >= 1")
        return value

    def check(self, amount: int, where: str) -> None:
        """Raise :class:`LimitError` if ``amount`` is above the cap, naming how to raise it."""
        cap = self.value
        if amount > cap:
            raise LimitError(
                f"{where}: {amount:,} {self.what} is above the limit of {cap:,}. If you really "
                f"mean it, raise the limit: set the environment variable {self.env}={amount}"
            )


#: Replicates of one experiment (config ``replicates:``, ``--replicates``, the Python API).
MAX_REPLICATES = Limit("replicates", "CRYSTALLIZE_MAX_REPLICATES", 100_000)
#: Size of one ``config.yaml`` in bytes.
MAX_CONFIG_BYTES = Limit("bytes", "CRYSTALLIZE_MAX_CONFIG_BYTES", 1_000_000)
#: Nodes of one ``config.yaml`` once its YAML aliases are expanded (a billion-laughs guard).
MAX_YAML_NODES = Limit("YAML nodes (aliases expanded)", "CRYSTALLIZE_MAX_YAML_NODES", 100_000)
