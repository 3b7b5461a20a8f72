"""Parameters of steps and datasources: explicit values first, then the context, then defaults."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..fingerprint import code_fingerprint, value_fingerprint
from ._context import FrozenContext


def is_artifact(value: Any) -> bool:
    """True for :class:`~crystallize.Artifact` instances (a class flag avoids an import cycle)."""
    return getattr(type(value), "is_artifact", False) is True


@dataclass(frozen=True)
class _Param:
    name: str
    has_default: bool
    default: Any
    is_artifact: bool


def _annotated_artifact(annotation: Any) -> bool:
    if isinstance(annotation, type):
        return getattr(annotation, "is_artifact", False) is True
    # Under ``from __future__ import annotations`` the annotation is the string "Artifact".
    return isinstance(annotation, str) and annotation.split(".")[-1] == "Artifact"


def analyse_signature(fn: Callable[..., Any], leading: int) -> tuple[int, list[_Param]]:
    """Split ``fn``'s parameters into up to ``leading`` positional ones (data, ctx) and the rest.

    Leading parameters are those without a default and not annotated ``Artifact``, so
    ``def step(data, factor=2)`` takes data alone and gets ``factor`` by keyword, and
    ``def step(data, out: Artifact)`` gets its artifact by keyword.
    """
    params = list(inspect.signature(fn).parameters.values())
    n = 0
    while (
        n < min(leading, len(params))
        and params[n].default is params[n].empty
        and params[n].kind in (params[n].POSITIONAL_ONLY, params[n].POSITIONAL_OR_KEYWORD)
        and not _annotated_artifact(params[n].annotation)
    ):
        n += 1
    result = []
    for p in params[n:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        result.append(
            _Param(
                p.name,
                p.default is not p.empty,
                None if p.default is p.empty else p.default,
                _annotated_artifact(p.annotation),
            )
        )
    return n, result


class Parametrised:
    """A function plus the parameters given to its factory; resolves the rest from the context.

    Shared by steps and datasources: parameters passed explicitly win; parameters not passed are
    taken from the context by name (that is how treatment values reach them), then from their
    defaults. A parameter annotated :class:`Artifact` receives the artifact it was given, or the
    experiment output with the same name.
    """

    _leading = 1

    def __init__(self, fn: Callable[..., Any], params: Mapping[str, Any]) -> None:
        self.fn = fn
        self.params = dict(params)
        self.n_leading, self._signature = analyse_signature(fn, self._leading)
        known = {p.name for p in self._signature}
        accepts_kwargs = any(
            p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()
        )
        unknown = set(self.params) - known
        if unknown and not accepts_kwargs:
            raise TypeError(
                f"{self.fn.__name__}() got unexpected parameter(s) {sorted(unknown)}; "
                f"it accepts {sorted(known) or 'none'}"
            )

    @property
    def artifact_params(self) -> list[str]:
        """Parameters that receive an artifact: annotated ``Artifact`` or given one."""
        return [
            p.name for p in self._signature if p.is_artifact or is_artifact(self.params.get(p.name))
        ]

    def resolve(
        self, ctx: FrozenContext, bind: Callable[[str, Any], Any] | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for one call, read from explicit params, then ``ctx``."""
        kwargs: dict[str, Any] = {}
        for p in self._signature:
            if p.is_artifact or is_artifact(self.params.get(p.name)):
                if bind is None:
                    raise TypeError(f"{self.name}: parameter {p.name!r} needs an artifact")
                given = self.params.get(p.name)
                kwargs[p.name] = bind(p.name, given if is_artifact(given) else None)
            elif p.name in self.params:
                kwargs[p.name] = self.params[p.name]
            elif p.name in ctx:
                kwargs[p.name] = ctx[p.name]
            elif p.has_default:
                kwargs[p.name] = p.default
            else:
                raise TypeError(
                    f"{self.name}: parameter {p.name!r} has no value; pass it to the factory "
                    f"({self.fn.__name__}({p.name}=...)) or provide context key {p.name!r} "
                    "through initial_ctx or a treatment"
                )
        for k, v in self.params.items():
            if k not in kwargs:
                kwargs[k] = v
        return kwargs

    @property
    def name(self) -> str:
        return self.fn.__name__

    def leading_args(self, *candidates: Any) -> tuple[Any, ...]:
        """The positional arguments ``fn`` takes, from (data, ctx) or (ctx,)."""
        return candidates[: self.n_leading]

    def fingerprint_parts(self) -> dict[str, str]:
        """Code and explicit parameters; artifacts count by name, not identity."""
        params = {
            k: (f"Artifact({v.name})" if is_artifact(v) else v)
            for k, v in sorted(self.params.items())
        }
        return {"code": code_fingerprint(self.fn), "params": value_fingerprint(params)}


