"""Exceptions raised by crystallize: the bottom of the package, importing nothing of it.

Every error a user can cause names the thing at fault (experiment, step, file, key) and says
what would fix it. Each one also keeps the builtin base it had before the tree existed, so
``except ValueError`` and friends keep working:

* CrystallizeError -- the root: ``except CrystallizeError`` catches all of them
    + ConfigError (ValueError) -- a folder config is wrong; ``.file``, ``.key``, ``.line``
    + ScaffoldError (ValueError) -- a new experiment folder cannot be created
    + GraphError (ValueError) -- the experiments do not form a valid graph
    + MissingArtifactError (FileNotFoundError) -- an upstream artifact is not in the store;
      ``.producer``, ``.path``
        + UpstreamFailedError -- because the upstream unit that should have written it failed
    + ContextMutationError (KeyError) -- a context key was assigned twice
    + PicklingError (TypeError) -- something a worker needs cannot be pickled
    + UnitError -- a unit's exception that could not cross a process boundary; carries the
      worker's traceback as ``.traceback_text``
    + UnreadTreatmentKeyError (ValueError) -- a treatment key nothing can read (before a run)
    + ExperimentFailedError (RuntimeError) -- experiments of a run failed; ``.failures``,
      ``.results``, the first failure's exception as ``__cause__``
    + LimitError (ValueError) -- an input is above one of the caps of ``model.limits`` (the
      message says how to raise it)
    + CallbackError (RuntimeError) -- an ``on_event`` callback raised; the run was stopped
    + HypothesisError (RuntimeError) -- a verifier or ranker raised, or a hypothesis names a
      metric no step records
    + LoaderError (RuntimeError) -- an artifact's loader raised reading a file
    + InvalidNameError (ValueError) -- a name that becomes a path of the store is unsafe
    + UnstorableValueError (TypeError) -- a metric the store could not give back exactly
    + CorruptRecordError (ValueError) -- a store record is not what a run wrote; ``.path``,
      ``.key`` (its version is not trusted, and reruns)
        + OlderLayoutError -- the version was stored by an older layout; ``.status``
    + StoreError (OSError) -- the store cannot do what was asked (read-only, a link)
    + ClusterError (RuntimeError) -- a Dask cluster cannot serve the run (unreachable, no
      workers, workers that cannot see the store); nothing has run
    + WorkerKilledError (RuntimeError) -- the unit killed its worker process every time it ran
    + ExecutorError (RuntimeError) -- an executor gave back outcomes that are not its units'
      one for one, in order; those units failed rather than take one another's results

(Warnings are not errors: the store's ``StoreWarning`` lives in :mod:`crystallize.store`.)

Every unit exception also carries its traceback as text (:func:`unit_traceback`): as
``.traceback_text``, and, when it crossed a process boundary, as a :class:`RemoteTraceback`
``__cause__``.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import Result


def did_you_mean(value: object, candidates: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the candidate closest to ``value``, or an empty string."""
    import difflib  # only a mistake needs it

    close = difflib.get_close_matches(str(value), list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class CrystallizeError(Exception):
    """The root of every exception crystallize raises on purpose."""


class ConfigError(CrystallizeError, ValueError):
    """A folder experiment's configuration is wrong.

    The message names the file, the key, the offending value and what was expected; ``file``,
    ``key`` and ``line`` (1-based, of the key in the file) are ``None`` where unknown.
    """

    def __init__(
        self, message: str, *, file: Any = None, key: str | None = None, line: int | None = None
    ) -> None:
        where = ""
        if file is not None:
            where = f"{file}"
            if key:
                where += f", key '{key}'"
            where += ": "
        super().__init__(where + message)
        self.file = file
        self.key = key
        self.line = line


class ScaffoldError(CrystallizeError, ValueError):
    """A new experiment cannot be created as asked (bad name, existing folder, unknown input)."""


class GraphError(CrystallizeError, ValueError):
    """The experiments do not form a valid graph: a cycle, an artifact nobody produces or two
    experiments produce, duplicate or missing names."""


class MissingArtifactError(CrystallizeError, FileNotFoundError):
    """An artifact a unit reads is not in the store.

    ``producer`` is the experiment that should have written it; ``path`` the file that is
    missing (``*`` standing for the step folder when no step wrote it), or ``None`` when the
    producer has no complete version at all.
    """

    def __init__(
        self, message: str, producer: str | None = None, path: Path | None = None
    ) -> None:
        # Only the message goes into args: unpickling (out of a worker) rebuilds from args,
        # then restores producer and path from __dict__.
        super().__init__(message)
        self.producer = producer
        self.path = path


class UpstreamFailedError(MissingArtifactError):
    """The artifact a unit reads is missing because the upstream unit that should have written
    it failed: the consumer's unit fails too, rather than read something else in its place."""


class ContextMutationError(CrystallizeError, KeyError):
    """A key of a :class:`~crystallize.FrozenContext` was assigned twice.

    Subclasses :class:`KeyError` so ``except KeyError`` keeps working, but renders its message
    as plain text instead of KeyError's quoted repr.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PicklingError(CrystallizeError, TypeError):
    """An object an experiment needs in a worker process cannot be pickled."""


class UnitError(CrystallizeError):
    """Stands in for a unit's exception that could not cross a process boundary.

    ``remote_type`` is the original exception's qualified type name; the message and the
    worker's traceback are kept verbatim.
    """

    def __init__(self, remote_type: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type
        self.message = message
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.remote_type, self.message, self.traceback_text)


class RemoteTraceback(CrystallizeError):
    """The traceback of an exception raised in a worker process, as text.

    Set as the ``__cause__`` of a unit's exception that crossed a process boundary (as
    :mod:`concurrent.futures` does), so printing the exception shows where it really happened.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


def unit_traceback(error: BaseException) -> str:
    """The full traceback of a unit's exception as text, wherever the unit ran."""
    text = getattr(error, "traceback_text", None)
    if isinstance(text, str) and text:
        return text
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


class UnreadTreatmentKeyError(CrystallizeError, ValueError):
    """A treatment sets a key that no step, datasource or verifier can read (found before the
    run: the condition would silently equal the baseline)."""




class ExperimentFailedError(CrystallizeError, RuntimeError):
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

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.failures, self.results)

class LimitError(CrystallizeError, ValueError):
    """An input is above one of the caps of ``crystallize.model`` (``MAX_REPLICATES``...); the
    message names the cap and the environment variable that raises it."""


class CallbackError(CrystallizeError, RuntimeError):
    """An ``on_event`` callback (a function or a plugin's hook) raised; ``__cause__`` is its
    exception. The run was stopped."""


class HypothesisError(CrystallizeError, RuntimeError):
    """A hypothesis could not be evaluated: its verifier or ranker raised, or it names a metric
    no step records. The message names the hypothesis, its verifier and where it was declared."""


class LoaderError(CrystallizeError, RuntimeError):
    """An artifact's loader raised while reading a file; ``__cause__`` is its exception."""


class InvalidNameError(CrystallizeError, ValueError):
    """A name that becomes a file or folder of the store would escape it or clash with it."""


class UnstorableValueError(CrystallizeError, TypeError):
    """A metric value the store cannot write so that resume gives it back exactly (metrics are
    checked when recorded, so this names one that escaped that check)."""


class CorruptRecordError(CrystallizeError, ValueError):
    """A record of the store (``metadata.json``, its marker) is not what a run wrote.

    ``path`` is the file and ``key`` the entry at fault; the version it belongs to is not
    trusted, and what it held is computed again.
    """

    def __init__(self, message: str, *, path: Any = None, key: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self),), {"path": self.path, "key": self.key}


class OlderLayoutError(CorruptRecordError):
    """A version stored by an older layout of crystallize: never reused (its units run again),
    but kept and pruned by the ``status`` it recorded (None if it has none this one knows)."""

    def __init__(self, message: str, *, path: Any = None, key: str | None = None,
                 status: str | None = None) -> None:
        super().__init__(message, path=path, key=key)
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self),), {"path": self.path, "key": self.key,
                                          "status": self.status}


class StoreError(CrystallizeError, OSError):
    """The store cannot do what was asked (read-only, a folder that is a symbolic link...)."""


class ClusterError(CrystallizeError, RuntimeError):
    """A Dask cluster cannot serve the run: unreachable, not a scheduler, mismatched package
    versions, no workers, or workers that cannot see the store. The message names the
    scheduler and the fix; nothing has run."""


class WorkerKilledError(CrystallizeError, RuntimeError):
    """The worker process running a unit died every time it ran it: the unit kills it."""


class ExecutorError(CrystallizeError, RuntimeError):
    """An executor's ``run_batch`` returned outcomes that do not match its units one for one,
    in order: the units of that batch are failed rather than given one another's results."""
