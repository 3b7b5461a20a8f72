"""Treatments: named variations of the context, each run as its own condition."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, overload

from ..fingerprint import code_fingerprint, value_fingerprint
from ..store import path_name_problem
from ._context import RESERVED_KEYS, FrozenContext, reserved_key_message
from ._parameters import Parametrised, type_mismatch

BASELINE = "baseline"


class Treatment:
    """A named variation: ``Treatment("double", {"factor": 2})`` or ``Treatment(name, fn)``.

    A mapping's values are added to the context of every unit of the condition (replacing
    ``initial_ctx`` values of the same key); a callable ``fn(ctx)`` may add keys itself. A
    treatment named ``baseline`` modifies the baseline condition, which always runs.
    """

    def __init__(
        self, name: str, apply: Mapping[str, Any] | Callable[[FrozenContext], Any] | None = None
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a treatment needs a non-empty name, got {name!r}")
        problem = path_name_problem(name)
        if problem:
            raise ValueError(
                f"treatment name {name!r} {problem}; it names the condition's folder in the "
                "store. Rename the treatment"
            )
        if apply is None:
            apply = {}
        if not (isinstance(apply, Mapping) or callable(apply)):
            raise TypeError(
                f"treatment {name!r}: apply must be a mapping of context values or a callable "
                f"fn(ctx), got {type(apply).__name__}"
            )
        if isinstance(apply, Mapping):
            for key in apply:
                if key in RESERVED_KEYS:
                    raise ValueError(reserved_key_message(key, f"treatment {name!r}"))
        self.name = name
        self.apply_payload = dict(apply) if isinstance(apply, Mapping) else apply

    def apply(self, ctx: FrozenContext) -> None:
        """Write this treatment's values into ``ctx`` (before the unit's steps run)."""
        with ctx._treatment_overlay():
            if callable(self.apply_payload):
                self.apply_payload(ctx)
            else:
                for key, value in self.apply_payload.items():
                    ctx[key] = value

    def type_mismatch(self, steps: Iterable[Parametrised]) -> tuple[str, str, str] | None:
        """The first value this treatment sets that does not fit the annotation of the
        parameter of that name of one of ``steps``, as ``(step, parameter, problem)``."""
        if callable(self.apply_payload):
            return None
        for step in steps:
            mismatch = type_mismatch(step.fn, self.apply_payload)
            if mismatch:
                return step.fn.__name__, mismatch[0], mismatch[1]
        return None

    def fingerprint(self) -> str:
        if callable(self.apply_payload):
            return code_fingerprint(self.apply_payload)
        return value_fingerprint(self.apply_payload)

    def __repr__(self) -> str:
        return f"Treatment({self.name!r}, {self.apply_payload!r})"


@overload
def treatment(name: str, apply: Mapping[str, Any] | Callable[..., Any]) -> Treatment: ...
@overload
def treatment(name: str) -> Callable[[Callable[..., Any]], Treatment]: ...


def treatment(name: str, apply: Any = None) -> Any:
    """Build a :class:`Treatment`; without ``apply`` it decorates ``fn(ctx)``."""
    if apply is not None:
        return Treatment(name, apply)
    return lambda fn: Treatment(name, fn)
