"""Importing the modules of an experiment folder (steps.py, outputs.py, ...) afresh."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import inspect
import re
import sys
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

from ..errors import ConfigError, did_you_mean
from ._files import CONFIG_FILE, ExperimentConfig, display_path, listing

PACKAGE = "crystallize_user"


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


class Modules:
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
                f"Available: {listing(available)}. Fix the name, or define it in {stem}.py",
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


