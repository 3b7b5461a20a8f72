"""Datasources: where a unit's data comes from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, overload

from ..fingerprint import combine, value_fingerprint
from ._context import FrozenContext
from ._parameters import Parametrised, analyse_signature, dress_factory, is_artifact
from ._unit_scope import current_unit

if TYPE_CHECKING:
    from ._artifacts import Artifact


class DataSource(ABC):
    """Produces the input of a unit's first step from the unit's context."""

    @abstractmethod
    def fetch(self, ctx: FrozenContext) -> Any:
        """Return the data for the unit described by ``ctx``."""

    def artifacts(self) -> list[Artifact]:
        """Upstream artifacts this datasource reads (they become graph edges)."""
        return []

    def fingerprint(self) -> str:
        """What the data depends on, for resume; subclasses refine it."""
        return value_fingerprint(type(self).__qualname__)

    def context_keys(self) -> set[str] | None:
        """Context keys this datasource can read (None: cannot tell); see :mod:`.analysis`."""
        return set()


class FunctionDataSource(Parametrised, DataSource):
    """A datasource made by :func:`data_source`: ``fn(ctx, **params)``."""

    def fetch(self, ctx: FrozenContext) -> Any:
        return self.fn(*self.leading_args(ctx), **self.resolve(ctx))

    def artifacts(self) -> list[Artifact]:
        return [v for v in self.params.values() if is_artifact(v)]

    def fingerprint(self) -> str:
        parts = self.fingerprint_parts()
        return combine(parts["code"], parts["params"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.fn.__name__}({args})"


@overload
def data_source(fn: Callable[..., Any], /) -> Callable[..., FunctionDataSource]: ...
@overload
def data_source() -> Callable[[Callable[..., Any]], Callable[..., FunctionDataSource]]: ...


def data_source(fn: Callable[..., Any] | None = None, /) -> Any:
    """Turn ``fn(ctx, **params)`` into a datasource factory: ``numbers(n=5)``.

    Use bare (``@data_source``) or called (``@data_source()``). Parameters not passed to the
    factory are read from the context by name, then from their defaults.
    """

    def wrap(func: Callable[..., Any]) -> Callable[..., FunctionDataSource]:
        analyse_signature(func, 1)

        def factory(**params: Any) -> FunctionDataSource:
            return FunctionDataSource(func, params)

        dress_factory(factory, func)
        factory.is_datasource_factory = True  # type: ignore[attr-defined]
        return factory

    return wrap(fn) if fn is not None else wrap


def as_datasource(obj: Any, *, what: str = "datasource") -> DataSource:
    """Accept a datasource or a factory whose parameters all have values."""
    if isinstance(obj, DataSource):
        return obj
    if callable(obj) and getattr(obj, "is_datasource_factory", False):
        source: DataSource = obj()
        return source
    raise TypeError(
        f"{what} must be a DataSource (made with @data_source, an Artifact, or an "
        f"ExperimentInput), got {obj!r}"
    )


class ExperimentInput(DataSource):
    """Bundles several datasources; ``fetch`` returns ``{alias: value}``.

    Artifacts read from the same upstream experiment must agree on its replicate count; a
    mismatch is reported when the unit runs.
    """

    def __init__(self, sources: Mapping[str, Any] | None = None, /, **named: Any) -> None:
        merged = {**dict(sources or {}), **named}
        if not merged:
            raise ValueError("ExperimentInput needs at least one aliased source, e.g. a=artifact")
        self.sources: dict[str, DataSource] = {
            alias: as_datasource(src, what=f"ExperimentInput source {alias!r}")
            for alias, src in merged.items()
        }

    def context_keys(self) -> set[str] | None:
        keys: set[str] = set()
        for src in self.sources.values():
            more = src.context_keys()
            if more is None:
                return None
            keys |= more
        return keys

    def fetch(self, ctx: FrozenContext) -> dict[str, Any]:
        runtime = current_unit()
        if runtime is not None:
            runtime.check_replicates_agree(self.artifacts())
        return {alias: src.fetch(ctx) for alias, src in self.sources.items()}

    def artifacts(self) -> list[Artifact]:
        return [a for src in self.sources.values() for a in src.artifacts()]

    def fingerprint(self) -> str:
        return combine(
            *(combine(value_fingerprint(alias), src.fingerprint())
              for alias, src in sorted(self.sources.items()))
        )

    def __repr__(self) -> str:
        return f"ExperimentInput({self.sources!r})"
