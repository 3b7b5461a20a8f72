"""Folder experiments: a ``config.yaml`` plus optional modules next to it (SPEC §3).

An experiments root holds one folder per experiment::

    experiments/
      producer/  config.yaml  steps.py  outputs.py  datasources.py
      consumer/  config.yaml  steps.py  verifiers.py

``config.yaml`` keys (anything else is reported as a mistake):

``name``
    The experiment's name; defaults to the folder name.
``replicates``, ``strategy``
    As for :class:`~crystallize.Experiment` (``strategy`` is ``rerun`` or ``resume``).
``datasource``
    Where the first step's data comes from; the shapes are:

    - omitted: the first step receives ``None``;
    - a bare name, ``datasource: load_numbers``: that function of ``datasources.py`` is the
      datasource, and the first step receives its value;
    - a bare reference, ``datasource: producer#summary``: the first step receives the upstream
      loader's output;
    - a mapping ``{alias: name or reference}``. With any ``<experiment>#<output>`` reference or
      more than one entry, the first step receives ``{alias: value}`` (an
      :class:`~crystallize.ExperimentInput`). A mapping with a single plain function entry is
      that function's datasource itself: the alias only labels it.

    A function in ``datasources.py`` is a :func:`~crystallize.data_source` factory or a plain
    function ``fn(ctx)``; parameters it is not given are read from the context, so
    ``initial_ctx`` and treatments reach it. ``<experiment>`` matches a sibling folder's name
    or its declared ``name``; ``<output>`` is one of that experiment's ``outputs`` aliases.
``steps``
    A non-empty list of ``name`` or ``{name: {param: value}}``: factories made with
    :func:`~crystallize.pipeline_step` in ``steps.py``.
``treatments``
    ``{name: {context key: value}}``.
``outputs``
    ``{alias: {file_name, writer, loader}}``; ``writer`` and ``loader`` name functions in
    ``outputs.py`` (both optional: the defaults write ``bytes``/``str`` and load ``bytes``;
    ``file_name`` defaults to the alias; ``alias: summary.json`` is short for
    ``{file_name: summary.json}``). An output binds to a step parameter annotated ``Artifact``
    with the alias as its name, or to an ``Artifact`` parameter given the alias as its value.
``hypotheses``
    A list of ``{name, verifier, metrics, ranker}``: ``verifier`` names a
    :func:`~crystallize.verifier` factory in ``verifiers.py`` (``{welch_t: {alpha: 0.01}}``
    passes parameters), ``metrics`` is a name or a list of names, ``ranker`` optionally names a
    function ``fn(verifier_output) -> float`` in ``verifiers.py`` (default:
    :func:`rank_by_p_value`), ``name`` defaults to the verifier's name.

Keys beyond SPEC §3: ``description`` (free text), ``initial_ctx`` (``{key: value}`` added to
every unit's context) and ``plugins`` (a list of the built-in ``ArtifactPlugin``,
``LoggingPlugin`` and ``SeedPlugin``, as a name or ``{name: {argument: value}}``; a relative
``ArtifactPlugin`` ``root_dir`` is relative to the working directory, like the default
``data``), ``timeout`` (the most seconds one unit may take; a step entry may carry its own,
``- {slow: {n: 3}, timeout: 60}``).

Each folder's modules are imported as the package ``crystallize_user.<folder name>`` (whose
search path is the folder, so ``from .helpers import f`` works) and are pickled by value, so
worker processes need not import them. Every mistake raises :class:`~crystallize.ConfigError`
naming the file, the key, the offending value and the fix, before anything runs.
"""

from ..errors import did_you_mean
from ._builder import NoData, rank_by_p_value
from ._files import (
    CONFIG_FILE,
    ExperimentConfig,
    display_path,
    experiment_configs,
    find_experiment_folders,
    locate_experiment,
    read_config,
    sibling_names,
)
from ._loader import load_experiment, load_graph
from ._scaffold import scaffold

__all__ = [
    "CONFIG_FILE",
    "ExperimentConfig",
    "NoData",
    "did_you_mean",
    "display_path",
    "experiment_configs",
    "find_experiment_folders",
    "load_experiment",
    "load_graph",
    "locate_experiment",
    "rank_by_p_value",
    "read_config",
    "scaffold",
    "sibling_names",
]
