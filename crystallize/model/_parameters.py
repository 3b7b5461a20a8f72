"""Parameters of steps and datasources: the treatment's value first, then the value passed
explicitly, then the rest of the context, then the default."""

from __future__ import annotations

import collections.abc
import inspect
import numbers
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fingerprint import code_fingerprint, value_fingerprint
from ._analysis import context_reads
from ._context import FrozenContext


def is_artifact(value: Any) -> bool:
    """True for :class:`~crystallize.Artifact` instances (a class flag avoids an import cycle)."""
    return getattr(type(value), "is_artifact", False) is True


def dress_factory(factory: Callable[..., Any], func: Callable[..., Any]) -> None:
    """Give ``factory`` the name and docstring of the user's ``func`` it builds objects from,
    and ``__wrapped__`` so that ``inspect.signature`` shows ``func``'s parameters."""
    factory.__name__ = func.__name__
    factory.__qualname__ = func.__qualname__
    factory.__doc__ = func.__doc__
    factory.__wrapped__ = func  # type: ignore[attr-defined]


def _is_bool(value: object) -> bool:
    # numpy.bool_ is no subclass of bool and registers no ABC; matched by name, not imported.
    kind = type(value)
    return isinstance(value, bool) or (kind.__module__ == "numpy" and kind.__name__ in (
        "bool_", "bool"))


_SCALARS: dict[type, Callable[[Any], bool]] = {
    bool: _is_bool,
    # bool is an int to Python, but `factor: true` for an int is a mistake in a config. The
    # numbers ABCs also admit numpy's scalars.
    int: lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
    float: lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    bytes: lambda v: isinstance(v, bytes),
    type(None): lambda v: v is None,
    Path: lambda v: isinstance(v, (str, os.PathLike)),
}
_CONTAINERS = (list, dict, tuple, set, frozenset)


def _matches(value: Any, annotation: Any) -> bool | None:
    """Whether ``value`` fits ``annotation``; None where the annotation is not one we check.

    Only scalars, containers (not their items), ``Literal`` and unions of those are checked:
    for any other class a value may still be acceptable (duck typing, conversions).
    """
    if annotation is None:
        annotation = type(None)
    if annotation in _SCALARS:
        return _SCALARS[annotation](value)
    if annotation in _CONTAINERS:
        return isinstance(value, annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        verdicts = [_matches(value, arg) for arg in typing.get_args(annotation)]
        return True if any(verdicts) else (None if None in verdicts else False)
    if origin in _CONTAINERS:
        return isinstance(value, origin)
    if annotation is collections.abc.Callable or origin is collections.abc.Callable:
        return callable(value)
    return None


def _annotation(fn: Callable[..., Any], param: inspect.Parameter) -> Any:
    """The parameter's annotation, evaluated if it is a string; ``empty`` if it cannot be."""
    annotation = param.annotation
    if isinstance(annotation, str):
        try:
            annotation = eval(annotation, getattr(fn, "__globals__", {}))  # noqa: S307
        except Exception:  # a name only imported for type checkers: not checked
            return param.empty
    return annotation


def type_mismatch(fn: Callable[..., Any], values: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first of ``values`` that does not fit ``fn``'s annotation of that parameter, as
    ``(parameter, problem)``, or None."""
    for name, param in inspect.signature(fn).parameters.items():
        if name not in values or param.annotation is param.empty:
            continue
        annotation = _annotation(fn, param)
        if annotation is param.empty or _matches(values[name], annotation) is not False:
            continue
        text = param.annotation if isinstance(param.annotation, str) else getattr(
            annotation, "__name__", str(annotation))
        value = values[name]
        return name, (f"parameter {name!r} is annotated {text}, got {value!r} "
                      f"({type(value).__name__})")
    return None


def check_types(fn: Callable[..., Any], values: Mapping[str, Any], label: str) -> None:
    """Raise :class:`TypeError` naming ``label`` and the parameter if a value does not fit
    ``fn``'s annotations (see :func:`type_mismatch`)."""
    mismatch = type_mismatch(fn, values)
    if mismatch:
        raise TypeError(f"{label}: {mismatch[1]}")


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

    Shared by steps and datasources. Precedence, highest first: the running condition's treatment
    value, the value passed to the factory, other context values (``initial_ctx``, keys added
    by earlier steps), the default. A parameter annotated :class:`Artifact` receives the
    artifact it was given, or the experiment output with the same name.
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
        check_types(fn, self.params, f"{fn.__name__}()")

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
            elif p.name in ctx.treated_keys:
                # A treatment always reaches the parameter it names, even one passed explicitly
                # (the explicit value is then the baseline's).
                kwargs[p.name] = ctx[p.name]
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

    def context_keys(self) -> set[str] | None:
        """Context keys this can read: its parameters and the keys its code reads from ``ctx``
        (None where the code uses the context in a way that cannot be followed)."""
        names = list(inspect.signature(self.fn).parameters)
        ctx_param = names[self._leading - 1] if self.n_leading >= self._leading else None
        reads = context_reads(self.fn, ctx_param)
        if reads is None:
            return None
        return reads | {p.name for p in self._signature if not p.is_artifact}

    def leading_args(self, *candidates: Any) -> tuple[Any, ...]:
        """The positional arguments ``fn`` takes, from (data, ctx) or (ctx,)."""
        return candidates[: self.n_leading]

    def fingerprint_parts(self) -> dict[str, str]:
        """Code and explicit parameters; artifacts count by name, not identity."""
        return {"code": code_fingerprint(self.fn), "params": self.params_fingerprint()}

    def params_fingerprint(self) -> str:
        """The ``params`` of :meth:`fingerprint_parts` alone (a resume has the code's already)."""
        params = {
            k: (f"Artifact({v.name})" if is_artifact(v) else v)
            for k, v in sorted(self.params.items())
        }
        return value_fingerprint(params)


