"""Exceptions raised by crystallize.

Every error a user can cause names the thing at fault (experiment, step, file, key) and says
what would fix it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .result import Result


class ContextMutationError(KeyError):
    """A key of a :class:`~crystallize.FrozenContext` was assigned twice.

    Subclasses :class:`KeyError` so ``except KeyError`` keeps working, but renders its message
    as plain text instead of KeyError's quoted repr.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnitError(Exception):
    """Stands in for a unit's exception that could not cross a process boundary.

    ``remote_type`` is the original exception's qualified type name; the message and the
    worker's traceback are kept verbatim.
    """

    def __init__(self, remote_type: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type
        self.traceback_text = traceback_text


class PicklingError(TypeError):
    """An object an experiment needs in a worker process cannot be pickled."""


class ExperimentFailedError(RuntimeError):
    """One or more experiments of a run failed.

    ``failures`` maps each failed experiment to its cause; ``results`` holds every result that
    was produced (including the failed experiments' partial ones), so nothing computed is lost.
    """

    def __init__(self, failures: Mapping[str, str], results: Mapping[str, Result]) -> None:
        lines = [f"  - {name}: {cause}" for name, cause in failures.items()]
        super().__init__(
            f"{len(failures)} experiment(s) failed:\n" + "\n".join(lines)
        )
        self.failures = dict(failures)
        self.results = dict(results)


class ConfigError(ValueError):
    """A folder experiment's configuration is wrong.

    The message names the file, the key, the offending value and what was expected.
    """

    def __init__(self, message: str, *, file: Any = None, key: str | None = None) -> None:
        where = ""
        if file is not None:
            where = f"{file}"
            if key:
                where += f", key '{key}'"
            where += ": "
        super().__init__(where + message)
        self.file = file
        self.key = key
