"""Checks around a run that keep a result from being silently wrong (SPEC §8).

Before anything runs: a treatment key that no step, datasource or verifier can read is an
error (the condition would silently equal the baseline), and a run whose units share one global
RNG (threads, async steps) is warned about. After an experiment ran: a treatment key that no unit
of its condition read is a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ..errors import UnreadTreatmentKeyError, did_you_mean
from ..model import Treatment, Verifier, uses_global_rng

if TYPE_CHECKING:
    from ..experiment import Experiment
    from ._unit import UnitOutcome


class ReproducibilityWarning(UserWarning):
    """A run whose seeded results may differ from run to run (a global RNG shared by threads)."""


def readable_keys(exp: Experiment) -> set[str] | None:
    """Context keys the experiment's datasource, steps and verifiers can read: their parameters
    and the keys their code reads from ``ctx`` (None where that cannot be told)."""
    keys: set[str] = set()
    for more in [exp.datasource.context_keys(), *(s.context_keys() for s in exp.pipeline.steps)]:
        if more is None:
            return None
        keys |= more
    for hyp in exp.hypotheses:
        if isinstance(hyp.verifier, Verifier):
            keys |= hyp.verifier.parameter_names()
    return keys


def _mapping_keys(treatment: Treatment) -> list[str]:
    payload = treatment.apply_payload
    return [] if callable(payload) else list(payload)


def check_treatment_keys(configured: Mapping[str, Experiment]) -> None:
    """Raise :class:`UnreadTreatmentKeyError` for a treatment key nothing in the graph can read.

    A key counts as readable if any experiment that runs the treatment has a step, datasource or
    verifier parameter of that name, or code reading it from the context. Experiments whose code
    cannot be analysed count as reading everything.
    """
    carriers: dict[tuple[str, str], list[str]] = {}
    for name, exp in configured.items():
        for t in exp.treatments:
            for key in _mapping_keys(t):
                carriers.setdefault((t.name, key), []).append(name)
    readable: dict[str, set[str] | None] = {}
    for (treatment, key), names in carriers.items():
        for name in names:
            if name not in readable:
                readable[name] = readable_keys(configured[name])
        if any(readable[n] is None or key in readable[n] for n in names):  # type: ignore[operator]
            continue
        known = sorted(set().union(*(readable[n] or set() for n in names)))
        raise UnreadTreatmentKeyError(
            f"treatment {treatment!r} sets {key!r}, but no step, datasource or verifier of "
            f"experiment(s) {', '.join(names)} can read it (no parameter named {key!r}, no "
            f"ctx[{key!r}] or ctx.get({key!r}) in their code)"
            f"{did_you_mean(key, known) or '.'} Keys they read: "
            f"{', '.join(known) or 'none'}. Fix the key, or give the step that should receive "
            f"it a parameter {key!r}"
        )


def global_rng_warnings(experiments: Iterable[Experiment], threaded: bool) -> dict[str, str]:
    """Per experiment whose units share a global RNG with each other, the warning to give.

    Threads share :mod:`random`'s and NumPy's global state, so such draws depend on timing;
    ``ctx.rng`` stays exact. Also issued as a :class:`ReproducibilityWarning`.
    """
    found: dict[str, str] = {}
    for exp in experiments:
        if not (threaded or exp.pipeline.is_async):
            continue
        users = [s.fn.__name__ for s in exp.pipeline.steps if uses_global_rng(s.fn)]
        fn = getattr(exp.datasource, "fn", None)
        if fn is not None and uses_global_rng(fn):
            users.insert(0, fn.__name__)
        if users:
            where = "in threads" if threaded else "concurrently on the event loop"
            found[exp.name] = (
                f"{', '.join(users)} draw(s) from a global random generator (random / "
                f"numpy.random) while units run {where}, where it is shared: those draws are "
                "not reproducible. Draw from ctx.rng (seeded per unit), or use "
                "executor='process' or 'inline'"
            )
            warnings.warn(f"{exp.name}: {found[exp.name]}", ReproducibilityWarning, stacklevel=2)
    return found


def unread_key_warnings(
    exp: Experiment, condition: str, outcomes: Iterable[UnitOutcome]
) -> list[str]:
    """Keys the condition's treatment set that no successful unit of it read.

    Only keys this experiment's code could read count: an inherited treatment's key that only
    an upstream reads is not this experiment's business.
    """
    treatment = exp.treatment_map.get(condition)
    finished = [o for o in outcomes if o.error is None]
    if treatment is None or not finished:
        return []
    unread = set.intersection(*(set(o.unread) for o in finished))
    if not unread:
        return []
    readable = readable_keys(exp)
    return [
        f"treatment {condition!r} set {key!r}, but no unit of {exp.name} [{condition}] read it: "
        "its numbers may be the baseline's"
        for key in sorted(unread) if readable is None or key in readable
    ]
