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
``data``).

Each folder's modules are imported as the package ``crystallize_user.<folder name>`` (whose
search path is the folder, so ``from .helpers import f`` works) and are pickled by value, so
worker processes need not import them. Every mistake raises :class:`~crystallize.ConfigError`
naming the file, the key, the offending value and the fix, before anything runs.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.machinery
import importlib.util
import inspect
import numbers
import re
import sys
import traceback
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import yaml

from .artifacts import Artifact
from .context import RESERVED_KEYS, FrozenContext
from .datasources import DataSource, ExperimentInput, data_source
from .errors import ConfigError
from .experiment import STRATEGIES, Experiment
from .hypotheses import Hypothesis, verifier
from .parameters import analyse_signature
from .plugins import ArtifactPlugin, BasePlugin, LoggingPlugin, SeedPlugin
from .steps import PipelineStep
from .treatments import Treatment

__all__ = [
    "CONFIG_FILE",
    "ExperimentConfig",
    "NoData",
    "display_path",
    "experiment_configs",
    "find_experiment_folders",
    "load_experiment",
    "load_graph",
    "locate_experiment",
    "rank_by_p_value",
    "read_config",
    "sibling_names",
]

CONFIG_FILE = "config.yaml"
PACKAGE = "crystallize_user"
TOP_LEVEL_KEYS = (
    "name", "description", "replicates", "strategy", "datasource", "steps", "treatments",
    "outputs", "hypotheses", "initial_ctx", "plugins",
)
OUTPUT_KEYS = ("file_name", "writer", "loader")
HYPOTHESIS_KEYS = ("name", "verifier", "metrics", "ranker")
PLUGINS: dict[str, type[BasePlugin]] = {
    "ArtifactPlugin": ArtifactPlugin,
    "LoggingPlugin": LoggingPlugin,
    "SeedPlugin": SeedPlugin,
}
# A @verifier factory carries no marker attribute; every one shares the code object of the
# decorator's inner factory, which identifies it without calling user code.
_VERIFIER_FACTORY_CODE = verifier(lambda baseline, treatment: {}).__code__


# -- small helpers ----------------------------------------------------------------------------
def display_path(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it, for messages."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        return path


def did_you_mean(value: object, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _listing(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "none"


def rank_by_p_value(output: Mapping[str, Any]) -> float:
    """The default hypothesis ranker: the verifier's ``p_value`` (lower ranks first), else 0."""
    value = output.get("p_value")
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return 0.0


class NoData(DataSource):
    """The datasource of a config without ``datasource:``; the first step receives ``None``."""

    def fetch(self, ctx: FrozenContext) -> None:
        return None

    def __repr__(self) -> str:
        return "NoData()"


# -- reading config.yaml ----------------------------------------------------------------------
@dataclass
class ExperimentConfig:
    """A parsed ``config.yaml``: its data, and the line of every key for error messages.

    Keys of :attr:`lines` are paths such as ``steps[1].scale.factor``.
    """

    path: Path
    data: dict[str, Any]
    lines: dict[str, int]

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def name(self) -> str:
        """The declared ``name``, or the folder name.

        :raises ConfigError: if ``name`` is not a non-empty string
        """
        name = self.data.get("name", self.folder.resolve().name)
        if not isinstance(name, str) or not name.strip():
            raise self.error(
                "name", f"name must be a non-empty string, got {name!r}",
                "Fix: name: my_experiment (or remove the key to use the folder name)",
            )
        return name

    @property
    def output_aliases(self) -> list[str]:
        """The aliases under ``outputs:`` (unvalidated)."""
        outputs = self.data.get("outputs")
        return [str(a) for a in outputs] if isinstance(outputs, Mapping) else []

    def line(self, key: str) -> int | None:
        """The line of ``key``, or of its nearest enclosing key."""
        while key:
            if key in self.lines:
                return self.lines[key]
            key = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", key) if re.search(r"[.\[]", key) else ""
        return None

    def error(self, key: str | None, problem: str, fix: str = "") -> ConfigError:
        """A :class:`ConfigError` for ``key`` of this file: the problem, its line, the fix."""
        line = self.line(key) if key else None
        text = problem + (f" (line {line})" if line else "")
        if fix:
            text += (" " if text.endswith("?") else ". ") + fix
        return ConfigError(text, file=display_path(self.path), key=key)


def _key_lines(
    node: yaml.Node, prefix: str, lines: dict[str, int], duplicates: list[tuple[str, int, int]]
) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            path = f"{prefix}.{key}" if prefix else key
            line = key_node.start_mark.line + 1
            if path in lines:
                duplicates.append((path, lines[path], line))
            lines[path] = line
            _key_lines(value_node, path, lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = f"{prefix}[{index}]"
            lines[path] = item.start_mark.line + 1
            _key_lines(item, path, lines, duplicates)


def read_config(path: Path) -> ExperimentConfig:
    """Parse a ``config.yaml`` (only the YAML: no module is imported).

    :raises ConfigError: if the file cannot be read, is not valid YAML, is empty, is not a
        mapping, or repeats a key
    """
    shown = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "file not found. Pass a config.yaml, an experiment folder or a folder of experiments",
            file=shown,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read it: {exc}", file=shown) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or str(exc)
        raise ConfigError(
            f"malformed YAML{where}: {problem}. Fix the syntax there: check the indentation, "
            "a missing ':' after a key, or an unclosed quote or bracket",
            file=shown,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML: {exc}", file=shown) from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError(
            "the file is empty. An experiment needs at least `steps:`, e.g.\n"
            "steps:\n  - my_step",
            file=shown,
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"expected a mapping of keys ({', '.join(TOP_LEVEL_KEYS)}), got "
            f"{type(data).__name__} {data!r}. Write one `key: value` per line",
            file=shown,
        )
    lines: dict[str, int] = {}
    duplicates: list[tuple[str, int, int]] = []
    assert node is not None
    _key_lines(node, "", lines, duplicates)
    config = ExperimentConfig(path, data, lines)
    if duplicates:
        key, first, second = duplicates[0]
        raise config.error(
            key, f"key {key.rsplit('.', 1)[-1]!r} is given twice (also at line {first}), and "
            "YAML would silently keep only the last one", "Remove or merge one of them",
        )
    return config


def find_experiment_folders(root: Path) -> list[Path]:
    """The folders directly under ``root`` that hold a ``config.yaml``, sorted by name."""
    try:
        children = sorted(root.iterdir())
    except OSError:
        return []
    return [c for c in children if not c.name.startswith(".") and (c / CONFIG_FILE).is_file()]


def locate_experiment(root: Path, name: str) -> ExperimentConfig | None:
    """The experiment called ``name`` among the folders of ``root``, or None.

    ``name`` matches a folder name first, then a declared ``name``. Folders whose config cannot
    be parsed are skipped here; they report their own error when they are loaded.
    """
    if "/" not in name and "\\" not in name and name not in (".", ".."):
        candidate = root / name / CONFIG_FILE
        if candidate.is_file():
            return read_config(candidate)
    for folder in find_experiment_folders(root):
        try:
            config = read_config(folder / CONFIG_FILE)
        except ConfigError:
            continue
        if config.data.get("name") == name:
            return config
    return None


def sibling_names(root: Path) -> list[str]:
    """Every name an experiment under ``root`` answers to (folder and declared names)."""
    names: set[str] = set()
    for folder in find_experiment_folders(root):
        names.add(folder.name)
        try:
            declared = read_config(folder / CONFIG_FILE).data.get("name")
        except ConfigError:
            continue
        if isinstance(declared, str):
            names.add(declared)
    return sorted(names)


def experiment_configs(path: Path) -> list[Path]:
    """The ``config.yaml`` files ``path`` designates.

    ``path`` is a config file, an experiment folder (holding ``config.yaml``) or an experiments
    root (every direct sub-folder holding one).

    :raises ConfigError: if ``path`` does not exist or designates no experiment
    """
    if not path.exists():
        raise ConfigError(
            "this path does not exist. Pass a config.yaml, an experiment folder or a folder of "
            "experiments",
            file=display_path(path),
        )
    if path.is_file():
        return [path]
    if (path / CONFIG_FILE).is_file():
        return [path / CONFIG_FILE]
    folders = find_experiment_folders(path)
    if not folders:
        raise ConfigError(
            f"no {CONFIG_FILE} in this folder or in its sub-folders. Create one with "
            f"`crystallize new NAME --root {display_path(path)}`, or pass the folder that holds "
            "your experiments",
            file=display_path(path),
        )
    return [f / CONFIG_FILE for f in folders]


# -- the user's modules -----------------------------------------------------------------------
class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles from source on every load and writes no ``__pycache__``.

    Experiment folders are edited between runs, often within the same second, which the
    mtime-based bytecode cache cannot tell apart.
    """

    def get_code(self, fullname: str) -> types.CodeType:
        return self.source_to_code(self.get_data(self.path), self.path)


# package name -> folder; see _package_name
_PACKAGE_FOLDERS: dict[str, Path] = {}


def _package_name(folder: Path) -> str:
    # Code fingerprints include module names, so the name must not depend on where the project
    # lives (a hash of the absolute path would make a moved checkout rerun everything). The
    # folder name is unique among siblings; only a second root with the same folder names in
    # one process needs the path hash.
    base = re.sub(r"\W", "_", folder.name) or "experiment"
    name = f"{PACKAGE}.{'_' + base if base[0].isdigit() else base}"
    if _PACKAGE_FOLDERS.setdefault(name, folder) != folder:
        name += "_" + hashlib.sha256(str(folder).encode()).hexdigest()[:10]
        _PACKAGE_FOLDERS[name] = folder
    return name


def _fresh_package(folder: Path) -> str:
    """Register an empty package for ``folder`` (dropping modules of an earlier load)."""
    name = _package_name(folder)
    for stale in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[stale]
    root = sys.modules.get(PACKAGE)
    if root is None:
        root = types.ModuleType(PACKAGE, "The modules of crystallize folder experiments.")
        root.__path__ = []
        sys.modules[PACKAGE] = root
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    setattr(root, name.rpartition(".")[2], package)
    # Covers every module of the package, including helpers the user imports relatively.
    cloudpickle.register_pickle_by_value(package)
    return name


class _Modules:
    """The modules of one experiment folder, imported on first use."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.folder = config.folder.resolve()
        self.package = _fresh_package(self.folder)

    def get(self, stem: str, key: str) -> types.ModuleType:
        """Import ``<stem>.py`` of the folder; ``key`` is the config key that needs it."""
        name = f"{self.package}.{stem}"
        module = sys.modules.get(name)
        if module is not None:
            return module
        path = self.folder / f"{stem}.py"
        if not path.is_file():
            raise self.config.error(
                key, f"it names a function of {stem}.py, but {display_path(path)} does not exist",
                f"Create {stem}.py next to {CONFIG_FILE} and define the function there",
            )
        spec = importlib.util.spec_from_file_location(
            name, path, loader=_SourceLoader(name, str(path))
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            del sys.modules[name]
            raise ConfigError(
                f"syntax error at line {exc.lineno}: {exc.msg}. Fix the Python syntax there",
                file=display_path(path),
            ) from None
        except Exception as exc:
            del sys.modules[name]
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
            where = f" at line {frames[-1].lineno}" if frames else ""
            raise ConfigError(
                f"importing it raised {type(exc).__name__}{where}: {exc}. Fix the module (or "
                "install what it imports)",
                file=display_path(path),
            ) from None
        cloudpickle.register_pickle_by_value(module)
        return module

    def lookup(
        self, stem: str, name: Any, key: str, *, what: str, accept: Callable[[Any], bool],
        fix: str,
    ) -> Any:
        """The object called ``name`` in ``<stem>.py`` that ``accept`` admits.

        :raises ConfigError: naming the available objects (and the nearest one) if ``name`` is
            not defined, or with ``fix`` if it is defined but not admitted
        """
        if not isinstance(name, str) or not name:
            raise self.config.error(
                key, f"expected the name of a {what} in {stem}.py, got {name!r}", fix
            )
        module = self.get(stem, key)
        found = vars(module).get(name)
        if found is None:
            available = [
                n for n, obj in vars(module).items()
                if not n.startswith("_") and accept(obj) and _defined_in(obj, module)
            ]
            raise self.config.error(
                key, f"unknown {what} {name!r}: {stem}.py defines no {name!r}"
                f"{did_you_mean(name, available)}",
                f"Available: {_listing(available)}. Fix the name, or define it in {stem}.py",
            )
        if not accept(found):
            raise self.config.error(key, f"{name!r} in {stem}.py is not a {what}", fix)
        return found


def _defined_in(obj: Any, module: types.ModuleType) -> bool:
    """Whether ``obj`` (or the function a factory wraps) is defined in ``module``, not imported."""
    try:
        obj = inspect.unwrap(obj)
    except ValueError:
        return False
    return getattr(obj, "__module__", None) == module.__name__


# -- building one experiment ------------------------------------------------------------------
def _is_step_factory(obj: Any) -> bool:
    return callable(obj) and getattr(obj, "is_step_factory", False) is True


def _is_verifier_factory(obj: Any) -> bool:
    return getattr(obj, "__code__", None) is _VERIFIER_FACTORY_CODE


def _is_datasource(obj: Any) -> bool:
    return isinstance(obj, DataSource) or (callable(obj) and not isinstance(obj, type))


def _plain_callable(obj: Any) -> bool:
    return callable(obj) and not isinstance(obj, type)


class _Builder:
    """Turns one :class:`ExperimentConfig` into an :class:`Experiment`."""

    def __init__(self, config: ExperimentConfig, loader: _GraphLoader) -> None:
        self.config = config
        self.loader = loader
        self.modules = _Modules(config)

    def build(self) -> Experiment:
        config = self.config
        unknown = [k for k in config.data if k not in TOP_LEVEL_KEYS]
        if unknown:
            key = str(unknown[0])
            raise config.error(
                key, f"unknown key {key!r}{did_you_mean(key, TOP_LEVEL_KEYS)}",
                f"Known keys: {', '.join(TOP_LEVEL_KEYS)}",
            )
        name = config.name
        outputs = self.outputs()
        datasource = self.datasource()
        steps, written = self.steps(outputs)
        for alias, art in outputs.items():
            if id(art) not in written:
                raise config.error(
                    f"outputs.{alias}", f"output {alias!r} is written by no step",
                    f"Give a step in steps.py a parameter `{alias}: Artifact` that calls "
                    f"{alias}.write(obj), or pass the alias to an Artifact parameter in "
                    f"steps: (- my_step: {{out: {alias}}}); otherwise remove the output",
                )
        settings = {
            "treatments": self.treatments(), "replicates": self.replicates(),
            "hypotheses": self.hypotheses(), "plugins": self.plugins(),
            "strategy": self.strategy(), "initial_ctx": self.initial_ctx(),
            "description": self.description(),
        }
        try:
            return Experiment(datasource, steps, name=name, outputs=outputs, **settings)
        except (ValueError, TypeError) as exc:
            raise config.error(None, f"invalid experiment: {exc}") from None

    # -- scalar keys ------------------------------------------------------------------------
    def replicates(self) -> int | None:
        value = self.config.data.get("replicates")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.config.error(
                "replicates", f"replicates must be a whole number >= 1, got {value!r} "
                f"({type(value).__name__})", "Fix: replicates: 3",
            )
        return value

    def strategy(self) -> str:
        value = self.config.data.get("strategy", "rerun")
        if value not in STRATEGIES:
            raise self.config.error(
                "strategy", f"strategy must be one of {', '.join(STRATEGIES)}, got {value!r}"
                f"{did_you_mean(value, STRATEGIES)}", "Fix: strategy: resume",
            )
        return str(value)

    def description(self) -> str | None:
        value = self.config.data.get("description")
        if value is not None and not isinstance(value, str):
            raise self.config.error(
                "description", f"description must be text, got {value!r}",
                "Quote it: description: \"...\"",
            )
        return value

    def initial_ctx(self) -> dict[str, Any]:
        value = self.config.data.get("initial_ctx") or {}
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise self.config.error(
                "initial_ctx", f"initial_ctx must map context keys to values, got {value!r}",
                "Fix: initial_ctx: {n: 100}",
            )
        self.check_reserved(value, "initial_ctx")
        return dict(value)

    def check_reserved(self, values: Mapping[str, Any], key: str) -> None:
        """Refuse context keys every unit sets itself (a value for them would be ignored)."""
        reserved = [k for k in values if k in RESERVED_KEYS]
        if reserved:
            raise self.config.error(
                f"{key}.{reserved[0]}", f"context key {reserved[0]!r} is reserved: every "
                "unit sets condition, replicate and seed itself",
                "Rename the key; to fix the master seed use plugins: [{SeedPlugin: {seed: 7}}]",
            )

    # -- entries of the form name or {name: {param: value}} ---------------------------------
    def named_entry(self, entry: Any, key: str, what: str) -> tuple[str, dict[str, Any]]:
        if isinstance(entry, str):
            return entry, {}
        if isinstance(entry, Mapping) and len(entry) == 1:
            (name, params), = entry.items()
            if params is None:
                params = {}
            if isinstance(name, str) and isinstance(params, Mapping) and all(
                isinstance(k, str) for k in params
            ):
                return name, dict(params)
        raise self.config.error(
            key, f"each {what} is a name or {{name: {{parameter: value}}}}, got {entry!r}",
            f"Fix: `- my_{what}` or `- my_{what}: {{factor: 2}}`",
        )

    def check_params(
        self, fn: Callable[..., Any], given: Mapping[str, Any], known: Iterable[str], key: str,
        label: str,
    ) -> None:
        known = list(known)
        accepts_any = any(
            p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()
        )
        for param in given:
            if param not in known and not accepts_any:
                raise self.config.error(
                    f"{key}.{param}", f"{label} has no parameter {param!r}"
                    f"{did_you_mean(param, known)}", f"Its parameters: {_listing(known)}",
                )

    # -- outputs ----------------------------------------------------------------------------
    def outputs(self) -> dict[str, Artifact]:
        raw = self.config.data.get("outputs")
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise self.config.error(
                "outputs", f"outputs must map aliases to files, got {raw!r}",
                "Fix: outputs: {summary: {file_name: summary.json, writer: dump_json, "
                "loader: load_json}}",
            )
        outputs: dict[str, Artifact] = {}
        file_names: dict[str, str] = {}
        for alias, spec in raw.items():
            key = f"outputs.{alias}"
            if not isinstance(alias, str) or not alias.isidentifier():
                raise self.config.error(
                    key, f"output alias {alias!r} must be a Python identifier, because steps "
                    "receive it as a parameter name", "Fix: use letters, digits and _",
                )
            if isinstance(spec, str) or spec is None:
                spec = {"file_name": spec or alias}
            if not isinstance(spec, Mapping):
                raise self.config.error(
                    key, f"expected {{file_name, writer, loader}}, got {spec!r}",
                    f"Fix: {alias}: {{file_name: {alias}.json, writer: dump_json, "
                    "loader: load_json}",
                )
            for field_name in spec:
                if field_name not in OUTPUT_KEYS:
                    raise self.config.error(
                        f"{key}.{field_name}", f"unknown key {field_name!r}"
                        f"{did_you_mean(field_name, OUTPUT_KEYS)}",
                        f"An output takes {', '.join(OUTPUT_KEYS)}",
                    )
            file_name = spec.get("file_name", alias)
            coders = {
                role: self.modules.lookup(
                    "outputs", spec[role], f"{key}.{role}", what=role, accept=_plain_callable,
                    fix=f"Define `def {spec[role]}(...)` in outputs.py",
                )
                for role in ("writer", "loader") if spec.get(role) is not None
            }
            try:
                art = Artifact(file_name, loader=coders.get("loader"), writer=coders.get("writer"))
            except ValueError as exc:
                raise self.config.error(f"{key}.file_name", str(exc)) from None
            if file_name in file_names:
                raise self.config.error(
                    f"{key}.file_name", f"outputs {file_names[file_name]!r} and {alias!r} both "
                    f"use file_name {file_name!r}, so consumers could not tell them apart",
                    "Give each output its own file_name",
                )
            file_names[file_name] = alias
            outputs[alias] = art
        return outputs

    # -- datasource -------------------------------------------------------------------------
    def datasource(self) -> DataSource:
        raw = self.config.data.get("datasource")
        if raw is None:
            return NoData()
        if isinstance(raw, str):
            return self.source(raw, "datasource")
        if not isinstance(raw, Mapping) or not raw:
            raise self.config.error(
                "datasource", f"expected a function name, <experiment>#<output>, or a mapping "
                f"of aliases to those, got {raw!r}",
                "Fix: datasource: {producer_summary: producer#summary}",
            )
        sources: dict[str, DataSource] = {}
        for alias, value in raw.items():
            if not isinstance(alias, str) or not alias:
                raise self.config.error(
                    "datasource", f"datasource aliases must be names, got {alias!r}",
                    "Fix: datasource: {numbers: load_numbers}",
                )
            sources[alias] = self.source(value, f"datasource.{alias}")
        single = len(sources) == 1 and not any("#" in str(v) for v in raw.values())
        return next(iter(sources.values())) if single else ExperimentInput(sources)

    def source(self, value: Any, key: str) -> DataSource:
        if isinstance(value, str) and "#" in value:
            return self.upstream(value, key)
        found = self.modules.lookup(
            "datasources", value, key, what="datasource", accept=_is_datasource,
            fix="Define `def load_numbers(ctx): ...` in datasources.py (optionally decorated "
            "with @data_source), or write <experiment>#<output> to read another experiment",
        )
        if isinstance(found, DataSource):
            return found
        try:
            factory = found if getattr(found, "is_datasource_factory", False) else data_source(
                found
            )
            return factory()
        except (TypeError, ValueError) as exc:
            raise self.config.error(key, f"cannot make a datasource of {value!r}: {exc}") from None

    def upstream(self, ref: str, key: str) -> Artifact:
        experiment, _, output = ref.partition("#")
        if not experiment or not output or "#" in output:
            raise self.config.error(
                key, f"{ref!r} is not a valid reference",
                "Write it as <experiment>#<output alias>, e.g. producer#summary",
            )
        root = self.config.folder.parent
        upstream = locate_experiment(root, experiment)
        if upstream is None:
            others = [n for n in sibling_names(root) if n != self.config.folder.resolve().name]
            raise self.config.error(
                key, f"no experiment {experiment!r} next to this one (searched the folders of "
                f"{display_path(root)} by folder name and declared name)"
                f"{did_you_mean(experiment, others)}",
                f"Experiments there: {_listing(others)}. Fix the name, or create "
                f"{display_path(root / experiment / CONFIG_FILE)}",
            )
        producer = self.loader.load(upstream.path, needed_by=(self.config, key))
        art = producer.outputs.get(output) or next(
            (a for a in producer.outputs.values() if a.name == output), None
        )
        if art is None:
            raise self.config.error(
                key, f"experiment {producer.name!r} has no output {output!r}"
                f"{did_you_mean(output, producer.outputs)}",
                f"Its outputs: {_listing(producer.outputs)}. Fix the alias, or declare it under "
                f"outputs: in {display_path(upstream.path)}",
            )
        return art

    # -- steps ------------------------------------------------------------------------------
    def steps(self, outputs: Mapping[str, Artifact]) -> tuple[list[PipelineStep], set[int]]:
        """The pipeline, and the ids of the outputs its steps write."""
        raw = self.config.data.get("steps")
        if not isinstance(raw, list) or not raw:
            problem = "no steps" if raw is None else f"steps must be a non-empty list, got {raw!r}"
            raise self.config.error(
                "steps", problem,
                "Add a list of step names, e.g. `steps: [my_step]`, with "
                "`@pipeline_step()\\ndef my_step(data, ctx): ...` in steps.py",
            )
        pipeline: list[PipelineStep] = []
        written: set[int] = set()
        for index, entry in enumerate(raw):
            key = f"steps[{index}]"
            name, params = self.named_entry(entry, key, "step")
            factory = self.modules.lookup(
                "steps", name, key, what="step", accept=_is_step_factory,
                fix="Decorate it with @pipeline_step() (from crystallize import pipeline_step)",
            )
            fn = factory.__wrapped__
            _, signature = analyse_signature(fn, 2)
            self.check_params(fn, params, [p.name for p in signature], f"{key}.{name}",
                              f"step {name!r}")
            for param in signature:
                if not param.is_artifact:
                    continue
                where = f"{key}.{name}.{param.name}"
                given = param.name in params
                alias = params.get(param.name, param.name)
                if not isinstance(alias, str) or alias not in outputs:
                    problem = (
                        f"its value {alias!r} is not an output alias" if given
                        else f"there is no output called {alias!r}"
                    )
                    raise self.config.error(
                        where if given else key,
                        f"parameter {param.name!r} of step {name!r} is annotated Artifact, but "
                        f"{problem}{did_you_mean(alias, outputs)}",
                        f"Outputs: {_listing(outputs)}. Declare `outputs: {{{alias}: "
                        f"{{file_name: ...}}}}`, or pass an alias: `- {name}: "
                        f"{{{param.name}: <alias>}}`",
                    )
                params[param.name] = outputs[alias]
                written.add(id(outputs[alias]))
            try:
                pipeline.append(factory(**params))
            except (TypeError, ValueError) as exc:
                raise self.config.error(key, f"cannot build step {name!r}: {exc}") from None
        return pipeline, written

    # -- treatments, hypotheses, plugins ----------------------------------------------------
    def treatments(self) -> list[Treatment]:
        raw = self.config.data.get("treatments")
        if raw is None:
            return []
        if not isinstance(raw, Mapping):
            raise self.config.error(
                "treatments", f"treatments must map names to context values, got {raw!r}",
                "Fix: treatments: {double: {factor: 2}}",
            )
        treatments = []
        for name, values in raw.items():
            key = f"treatments.{name}"
            values = {} if values is None else values
            if not isinstance(values, Mapping) or not all(isinstance(k, str) for k in values):
                raise self.config.error(
                    key, f"treatment {name!r} must map context keys to values, got {values!r}",
                    f"Fix: {name}: {{factor: 2}}",
                )
            self.check_reserved(values, key)
            try:
                treatments.append(Treatment(str(name), dict(values)))
            except (TypeError, ValueError) as exc:
                raise self.config.error(key, str(exc)) from None
        return treatments

    def hypotheses(self) -> list[Hypothesis]:
        raw = self.config.data.get("hypotheses")
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise self.config.error(
                "hypotheses", f"hypotheses must be a list, got {raw!r}",
                "Fix: hypotheses: [{name: better, verifier: welch_t, metrics: score}]",
            )
        made: list[Hypothesis] = []
        for index, entry in enumerate(raw):
            key = f"hypotheses[{index}]"
            if not isinstance(entry, Mapping) or "verifier" not in entry:
                raise self.config.error(
                    key, f"each hypothesis is a mapping with at least `verifier`, got {entry!r}",
                    "Fix: - {name: better, verifier: welch_t, metrics: score}",
                )
            for field_name in entry:
                if field_name not in HYPOTHESIS_KEYS:
                    raise self.config.error(
                        f"{key}.{field_name}", f"unknown key {field_name!r}"
                        f"{did_you_mean(field_name, HYPOTHESIS_KEYS)}",
                        f"A hypothesis takes {', '.join(HYPOTHESIS_KEYS)}",
                    )
            vname, params = self.named_entry(entry["verifier"], f"{key}.verifier", "verifier")
            factory = self.modules.lookup(
                "verifiers", vname, f"{key}.verifier", what="verifier",
                accept=_is_verifier_factory,
                fix="Decorate it with @verifier (from crystallize import verifier)",
            )
            fn = factory.__wrapped__
            known = list(inspect.signature(fn).parameters)[2:]
            self.check_params(fn, params, known, f"{key}.verifier.{vname}", f"verifier {vname!r}")
            metrics = entry.get("metrics")
            if metrics is not None and not (
                isinstance(metrics, str)
                or (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics))
            ):
                raise self.config.error(
                    f"{key}.metrics", f"metrics must be a metric name or a list of names, got "
                    f"{metrics!r}", "Fix: metrics: score",
                )
            ranker = rank_by_p_value
            if entry.get("ranker") is not None:
                ranker = self.modules.lookup(
                    "verifiers", entry["ranker"], f"{key}.ranker", what="ranker",
                    accept=_plain_callable,
                    fix="Define `def my_ranker(result) -> float` in verifiers.py",
                )
            name = entry.get("name", vname)
            if not isinstance(name, str) or not name or name in {h.name for h in made}:
                raise self.config.error(
                    f"{key}.name", f"hypothesis names must be distinct non-empty strings, got "
                    f"{name!r}", "Give each hypothesis its own name",
                )
            made.append(Hypothesis(
                verifier=factory(**params), metrics=metrics, ranker=ranker, name=name
            ))
        return made

    def plugins(self) -> list[BasePlugin]:
        raw = self.config.data.get("plugins")
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise self.config.error(
                "plugins", f"plugins must be a list, got {raw!r}",
                "Fix: plugins: [{ArtifactPlugin: {versioned: true}}]",
            )
        plugins = []
        for index, entry in enumerate(raw):
            key = f"plugins[{index}]"
            name, params = self.named_entry(entry, key, "plugin")
            cls = PLUGINS.get(name)
            if cls is None:
                raise self.config.error(
                    key, f"unknown plugin {name!r}{did_you_mean(name, PLUGINS)}",
                    f"Built-in plugins: {_listing(PLUGINS)}",
                )
            try:
                plugins.append(cls(**params))
            except (TypeError, ValueError) as exc:
                raise self.config.error(key, f"cannot make {name}: {exc}") from None
        return plugins


# -- loading graphs ---------------------------------------------------------------------------
class _GraphLoader:
    """Loads experiments and, on demand, the upstream experiments they reference.

    Each folder is loaded once, so every consumer of an output holds the producer's very
    :class:`Artifact` object (graph edges are inferred by identity). :attr:`order` lists the
    loaded experiments, upstreams before their consumers.
    """

    def __init__(self) -> None:
        self.loaded: dict[Path, Experiment] = {}
        self.order: list[Experiment] = []
        self.sources: dict[str, Path] = {}
        self._loading: list[tuple[Path, str]] = []

    def load(
        self, path: Path, *, needed_by: tuple[ExperimentConfig, str] | None = None
    ) -> Experiment:
        key = path.resolve()
        if key in self.loaded:
            return self.loaded[key]
        for index, (loading, _) in enumerate(self._loading):
            if loading == key:
                names = [n for _, n in self._loading[index:]] + [self._loading[index][1]]
                assert needed_by is not None
                config, ref_key = needed_by
                raise config.error(
                    ref_key, f"the experiments depend on each other in a cycle: "
                    f"{' -> '.join(names)}",
                    "An experiment graph must be a DAG: remove one of these references",
                )
        config = read_config(path)
        name = config.name
        self._loading.append((key, name))
        try:
            experiment = _Builder(config, self).build()
        finally:
            self._loading.pop()
        other = self.sources.setdefault(name, key)
        if other != key:
            raise config.error(
                "name", f"experiment name {name!r} is also used by {display_path(other)}",
                "Names must be unique in a graph: rename one of them",
            )
        self.loaded[key] = experiment
        self.order.append(experiment)
        return experiment


def load_experiment(path: Path) -> Experiment:
    """Load the folder experiment at ``path`` (its ``config.yaml`` or the folder holding it).

    Upstream experiments it references are read to resolve their outputs, but only this
    experiment is returned; run it with :class:`~crystallize.ExperimentGraph.from_yaml` to run
    its prerequisites too.

    :raises ConfigError: for any mistake in the config or its modules, or a missing path
    """
    path = Path(path)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise ConfigError(
                f"no {CONFIG_FILE} in this folder. Pass an experiment folder; for a folder of "
                "experiments use ExperimentGraph.from_yaml",
                file=display_path(path),
            )
        path = path / CONFIG_FILE
    return _GraphLoader().load(path)


def load_graph(path: Path) -> list[Experiment]:
    """Load the experiments ``path`` designates, upstreams first.

    ``path`` is a config file or an experiment folder (that experiment plus every experiment it
    depends on, transitively, searched among the sibling folders of its folder), or an
    experiments root (every experiment folder directly under it).

    :raises ConfigError: for any mistake in a config or its modules, a missing path, a cycle
        between folders, or two experiments with one name
    """
    loader = _GraphLoader()
    for config in experiment_configs(Path(path)):
        loader.load(config)
    return loader.order
