"""The way :meth:`Experiment.from_yaml` and :meth:`ExperimentGraph.from_yaml` reach folder configs.

Folder configs (:mod:`crystallize.config`) build experiments, so they sit above this package
and it cannot import them. The package root registers their loaders here, once, when
``crystallize`` is imported; every import of a submodule imports the root first, so the
loaders are always in place before a user can call ``from_yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._experiment import Experiment


@dataclass(frozen=True)
class FolderLoaders:
    #: one experiment from a ``config.yaml`` or the folder holding it
    experiment: Callable[[Path], Experiment]
    #: the experiments a path names, with the upstream experiments they read from
    graph: Callable[[Path], list[Experiment]]


_registered: list[FolderLoaders] = []


def register_folder_loaders(loaders: FolderLoaders) -> None:
    _registered[:] = [loaders]


def folder_loaders() -> FolderLoaders:
    if not _registered:
        raise RuntimeError("no folder-config loader is registered; import crystallize first")
    return _registered[0]
