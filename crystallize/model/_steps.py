"""Pipeline steps: ``@pipeline_step`` factories and the :class:`Pipeline` that chains them."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, overload

from ..store import check_name
from ._parameters import Parametrised, analyse_signature, dress_factory


def step_dir_name(fn_name: str) -> str:
    """On-disk name of a function step: ``produce_summary`` -> ``Produce_SummaryStep``."""
    return fn_name.title() + "Step"


class PipelineStep(Parametrised):
    """One step: ``fn(data, ctx, **params)`` returning new data or ``(data, metrics)``.

    Build steps with :func:`pipeline_step`. ``name`` is the directory the step's artifacts go to
    (``Produce_SummaryStep`` for a function ``produce_summary``).
    """

    _leading = 2

    def __init__(
        self, fn: Callable[..., Any], params: Mapping[str, Any], *, cacheable: bool = False,
        timeout: float | None = None,
    ) -> None:
        super().__init__(fn, params)
        self.cacheable = cacheable
        #: The most seconds one call may take (see :func:`pipeline_step`).
        self.timeout = check_timeout(timeout, f"step {fn.__name__!r}")
        self.is_async = inspect.iscoroutinefunction(fn)

    @property
    def name(self) -> str:
        return step_dir_name(self.fn.__name__)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.fn.__name__}({args})"


def check_timeout(timeout: Any, where: str) -> float | None:
    """``timeout`` as seconds (None: no limit); a clear error for anything but a number > 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{where}: timeout must be a number of seconds > 0, got {timeout!r}")
    return float(timeout)


@overload
def pipeline_step(fn: Callable[..., Any], /) -> Callable[..., PipelineStep]: ...
@overload
def pipeline_step(
    *, cacheable: bool = False, timeout: float | None = None
) -> Callable[[Callable[..., Any]], Callable[..., PipelineStep]]: ...


def pipeline_step(
    fn: Callable[..., Any] | None = None, /, *, cacheable: bool = False,
    timeout: float | None = None,
) -> Any:
    """Turn ``fn(data, ctx, **params)`` into a step factory.

    ``scale(factor=2)`` then returns a :class:`PipelineStep`. Use bare (``@pipeline_step``) or
    called (``@pipeline_step(cacheable=True)``). With ``cacheable=True`` the step's outputs are
    kept in a cache shared by every worker and run, keyed by its code, parameters, the context
    values it reads and its input. With ``timeout=seconds`` a call that takes longer fails its
    unit with a :class:`TimeoutError` (the factory's ``timeout=`` overrides it per step).
    """
    check_timeout(timeout, "pipeline_step")

    def wrap(func: Callable[..., Any]) -> Callable[..., PipelineStep]:
        analyse_signature(func, 2)  # fail at decoration time on a signature we cannot read

        def factory(**params: Any) -> PipelineStep:
            # `timeout` belongs to the step unless the function has a parameter of that name.
            limit = timeout
            if "timeout" in params and "timeout" not in inspect.signature(func).parameters:
                limit = params.pop("timeout")
            return PipelineStep(func, params, cacheable=cacheable, timeout=limit)

        dress_factory(factory, func)
        factory.is_step_factory = True  # type: ignore[attr-defined]
        return factory

    return wrap(fn) if fn is not None else wrap


def as_step(obj: Any) -> PipelineStep:
    """Accept a step, or a factory whose parameters all have values, as a pipeline entry."""
    if isinstance(obj, PipelineStep):
        return obj
    if callable(obj) and getattr(obj, "is_step_factory", False):
        step: PipelineStep = obj()
        return step
    raise TypeError(
        f"pipeline entries must be steps made with @pipeline_step, got {obj!r}; "
        "decorate the function with @pipeline_step and call the factory, e.g. scale(factor=2)"
    )


class Pipeline:
    """An ordered list of steps; the output of each is the input of the next."""

    def __init__(self, steps: Iterable[Any]) -> None:
        self.steps: list[PipelineStep] = [as_step(s) for s in steps]
        for step in self.steps:
            check_name("step", step.name, f"step function {step.fn.__name__!r}")
        if not self.steps:
            raise ValueError("a pipeline needs at least one step")

    @property
    def is_async(self) -> bool:
        return any(s.is_async for s in self.steps)

    def __iter__(self) -> Iterator[PipelineStep]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"Pipeline({self.steps!r})"
