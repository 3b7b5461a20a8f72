"""The unit running in this thread or task, for the datasources that must reach it.

An :class:`~crystallize.Artifact` finds its file through the running unit (which knows the
upstream versions it reads), and an :class:`~crystallize.ExperimentInput` asks it whether its
upstreams agree. The running layer opens :func:`unit_scope` around each unit, so the context
mapping handed to user code carries no reference to the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._artifacts import Artifact
    from ._context import FrozenContext


class UnitRuntime(Protocol):
    """What datasources may ask of the running unit."""

    def artifact_path(self, artifact: Artifact, ctx: FrozenContext) -> Path: ...

    def check_replicates_agree(self, artifacts: list[Artifact]) -> None: ...


_CURRENT: ContextVar[UnitRuntime | None] = ContextVar("crystallize_unit", default=None)


@contextmanager
def unit_scope(runtime: UnitRuntime) -> Iterator[None]:
    """Make ``runtime`` the running unit of this thread or task while the block runs."""
    token = _CURRENT.set(runtime)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_unit() -> UnitRuntime | None:
    return _CURRENT.get()
