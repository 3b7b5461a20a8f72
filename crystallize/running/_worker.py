"""What runs in a worker process (the process executor's or a Dask worker's): the experiments
it keeps unpickled, its units, and the packed outcomes it sends back."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import cloudpickle

from ..errors import PicklingError, RemoteTraceback
from ._unit import UnitOutcome, UnitTask, run_unit

if TYPE_CHECKING:
    from ..experiment import Experiment

_T = TypeVar("_T")

#: How many experiments a worker process keeps unpickled, by key.
KEPT_EXPERIMENTS = 256
_SPECS: dict[str, Experiment] = {}


def remember(kept: dict[str, _T], key: str, value: _T) -> _T:
    """Keep ``value`` under ``key`` in a cache of at most :data:`KEPT_EXPERIMENTS` entries (it
    starts over when full). Workers keep their experiments so, and the process executor notes
    in the same way which of them each of its workers holds."""
    if key not in kept and len(kept) >= KEPT_EXPERIMENTS:
        kept.clear()
    kept[key] = value
    return value


#: One experiment's part of a request to a worker: the experiment's key, its pickle (None for
#: one the worker holds already) and its units.
Group = tuple[str, "bytes | None", list[UnitTask]]


def missing_experiments(groups: Sequence[Group]) -> list[str]:
    """The experiments of ``groups`` that come without a pickle and this worker does not hold
    (see :func:`remember`): it must be sent them before it can run their units."""
    return [key for key, blob, _ in groups if blob is None and key not in _SPECS]


def run_pickled_units(groups: Sequence[Group]) -> list[bytes]:
    """Worker-process entry point: unpickle each experiment once per worker, run the units.

    A call may carry several units, of one experiment or of several (a batch: one round trip
    for units too small to be worth one each). Each outcome is pickled here rather than by the
    pool, so that a metric value that cannot travel back is reported by name, as that unit's
    error, instead of as a bare pickling error for the whole call. :func:`unpack_outcome` reads
    them; they come in the order of the groups, then of their units.
    """
    # Those held already are taken first: unpickling the others may make room by forgetting
    # some of them.
    held = {key: _SPECS[key] for key, _, _ in groups if key in _SPECS}
    packed: list[bytes] = []
    for key, blob, tasks in groups:
        experiment = held.get(key)
        if experiment is None:
            if blob is None:
                raise RuntimeError(f"this worker holds no experiment {key!r}: send its pickle")
            experiment = remember(_SPECS, key, cloudpickle.loads(blob))
        packed.extend(_packed(experiment, run_unit(experiment, task)) for task in tasks)
    return packed


def _packed(experiment: Experiment, outcome: UnitOutcome) -> bytes:
    try:
        return cloudpickle.dumps(outcome)
    except Exception as exc:
        bad = []
        for name, value in outcome.metrics.items():
            try:
                cloudpickle.dumps(value)
            except Exception:
                bad.append(name)
        outcome.metrics = {k: v for k, v in outcome.metrics.items() if k not in bad}
        outcome.error = PicklingError(
            f"experiment {experiment.name!r}: metric(s) {bad} hold values that cannot be sent "
            f"back from the worker process ({exc}); record picklable values (numbers, strings, "
            "lists, arrays), or run with executor='thread' or 'inline'"
            if bad else f"experiment {experiment.name!r}: the unit's outcome cannot be sent "
            f"back from the worker process: {exc}"
        )
        return cloudpickle.dumps(outcome)


def unpack_outcome(data: bytes) -> UnitOutcome:
    """A :class:`UnitOutcome` a worker returned from :func:`run_pickled_units`.

    An error's frames stay in the worker; its traceback text becomes the ``__cause__`` (as
    :mod:`concurrent.futures` does), so printing the error shows where it was raised.
    """
    outcome: UnitOutcome = pickle.loads(data)
    if outcome.error is not None and outcome.traceback:
        outcome.error.__cause__ = RemoteTraceback(outcome.traceback)
    return outcome
