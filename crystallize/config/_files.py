"""Reading ``config.yaml`` files and finding experiment folders."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, LimitError
from ..model import MAX_CONFIG_BYTES, MAX_YAML_NODES
from ..store import path_name_problem

CONFIG_FILE = "config.yaml"
PACKAGE = "crystallize_user"
TOP_LEVEL_KEYS = (
    "name", "description", "replicates", "retries", "strategy", "datasource", "steps",
    "treatments", "outputs", "hypotheses", "initial_ctx", "plugins", "timeout",
)
# libyaml's parser is about ten times faster than the pure-Python one, where it is installed.
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# -- small helpers ----------------------------------------------------------------------------
def display_path(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it, for messages."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        return path


def listing(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "none"



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
        problem = path_name_problem(name)
        if problem:
            raise self.error(
                "name", f"experiment name {name!r} {problem}; it names the experiment's folder "
                "in the store", "Fix: name: my_experiment",
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
        return ConfigError(text, file=display_path(self.path), key=key, line=line)


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


def _check_expansion(root: yaml.Node, shown: Path) -> None:
    """Refuse YAML whose aliases expand to more nodes than :data:`MAX_YAML_NODES`.

    An alias is a reference, cheap to parse, but everything that walks the data (key lines,
    fingerprints, messages) pays for every expansion: a few hundred bytes of nested aliases
    expand to billions of nodes.
    """
    cap = MAX_YAML_NODES.value
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # a node that contains itself counts once
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children: Iterable[yaml.Node] = node.value
        elif isinstance(node, yaml.MappingNode):
            children = (n for pair in node.value for n in pair)
        else:
            children = ()
        for child in children:
            total += size(child)
            if total > cap:
                break
        sizes[id(node)] = total
        return total

    if size(root) > cap:
        raise ConfigError(
            f"its YAML aliases (&anchor / *alias) expand to more than {cap:,} nodes. Write the "
            f"values out, or, if the config really is that large, raise the limit: set the "
            f"environment variable {MAX_YAML_NODES.env}",
            file=shown,
        )


def read_config(path: Path) -> ExperimentConfig:
    """Parse a ``config.yaml`` (only the YAML: no module is imported).

    :raises ConfigError: if the file cannot be read, is not valid YAML, is empty, is not a
        mapping, or repeats a key
    """
    shown = display_path(path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(
            f"not a config: crystallize reads a YAML file such as {CONFIG_FILE}, not a "
            f"{path.suffix or 'suffix-less'} file. Pass the experiment folder or its {CONFIG_FILE}",
            file=shown,
        )
    if path.is_dir():
        raise ConfigError(
            f"this is a folder, not a file. Replace it by a {CONFIG_FILE} file (see "
            "`crystallize new NAME`), or remove it",
            file=shown,
        )
    try:
        MAX_CONFIG_BYTES.check(path.stat().st_size, f"{shown}: config size")
        text = path.read_text(encoding="utf-8")
    except LimitError as exc:
        raise ConfigError(str(exc)) from None
    except FileNotFoundError:
        raise ConfigError(
            "file not found. Pass a config.yaml, an experiment folder or a folder of experiments",
            file=shown,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read it: {exc}", file=shown) from None
    loader = _YAML_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, shown)
        data = loader.construct_document(node) if node is not None else None
    except RecursionError:
        raise ConfigError("the YAML is nested too deeply to read. Flatten it", file=shown) from None
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
    # exists(), not is_file(): a config.yaml that is a folder is reported when loaded, not
    # silently left out of the run.
    return [c for c in children if not c.name.startswith(".") and (c / CONFIG_FILE).exists()]


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


def _path_suggestion(path: Path) -> str:
    """``; did you mean 'examples/dag'?`` for a mistyped part of ``path``, if one is close."""
    parts = path.parts
    for depth in range(len(parts)):
        parent = Path(*parts[:depth]) if depth else Path(".")
        if (parent / parts[depth]).exists():
            continue
        try:
            names = [p.name for p in parent.iterdir() if not p.name.startswith(".")]
        except OSError:
            return ""
        close = difflib.get_close_matches(parts[depth], names, n=1, cutoff=0.6)
        if not close:
            return ""
        fixed = Path(*parts[:depth], close[0], *parts[depth + 1:])
        return f"; did you mean {fixed.as_posix()!r}?"
    return ""


def experiment_configs(path: Path) -> list[Path]:
    """The ``config.yaml`` files ``path`` designates.

    ``path`` is a config file, an experiment folder (holding ``config.yaml``) or an experiments
    root (every direct sub-folder holding one).

    :raises ConfigError: if ``path`` does not exist or designates no experiment
    """
    if not path.exists():
        raise ConfigError(
            "this path does not exist. Pass a config.yaml, an experiment folder or a folder of "
            f"experiments{_path_suggestion(path)}",
            file=display_path(path),
        )
    if path.is_file():
        return [path]
    if (path / CONFIG_FILE).exists():
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


