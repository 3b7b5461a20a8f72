"""Normalising what an :class:`Experiment` is given: its treatments and its default name."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..model import Artifact, DataSource, ExperimentInput, Pipeline, Treatment


def as_treatments(treatments: Any, where: str) -> list[Treatment]:
    if treatments is None:
        return []
    if isinstance(treatments, Mapping):
        treatments = [
            v if isinstance(v, Treatment) else Treatment(k, v) for k, v in treatments.items()
        ]
    items = list(treatments)
    for t in items:
        if not isinstance(t, Treatment):
            raise TypeError(f"{where}: treatments must be Treatment objects, got {t!r}")
    names = [t.name for t in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}: treatment name(s) {dupes} given more than once")
    return items


def _source_label(source: DataSource) -> str:
    if isinstance(source, Artifact):
        return Path(source.name).stem
    if isinstance(source, ExperimentInput):
        return "_".join(source.sources)
    fn = getattr(source, "fn", None)
    return getattr(fn, "__name__", None) or type(source).__name__.lower()


def default_name(datasource: DataSource, pipeline: Pipeline) -> str:
    """An unnamed experiment's name: its datasource and steps, ``numbers-scale-total``.

    Built from names, not code, so editing a step's body keeps the name (and the store).
    """
    parts = [_source_label(datasource)] + [step.fn.__name__ for step in pipeline.steps]
    return re.sub(r"[^A-Za-z0-9_-]+", "_", "-".join(parts)).strip("_") or "experiment"
