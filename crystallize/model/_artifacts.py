"""Artifacts: files an experiment publishes and other experiments consume."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ..errors import LoaderError
from ..fingerprint import code_fingerprint, combine, value_fingerprint
from ..store import check_name
from ._context import FrozenContext
from ._datasources import DataSource
from ._unit_scope import current_unit


class ArtifactSink(Protocol):
    """Where a bound artifact's writes go: the running unit."""

    def write_artifact(self, artifact: Artifact, payload: bytes) -> Path: ...


class Artifact(DataSource):
    """A file published by a producer experiment, and a datasource for its consumers.

    ``name`` is the file name. ``writer(obj) -> bytes | str`` encodes what a step writes
    (default: accepts ``bytes`` or ``str``); ``loader(path) -> Any`` decodes it for consumers
    (default: the file's bytes).

    A producer lists the artifact in its ``outputs`` and hands it to a step parameter annotated
    ``Artifact``; inside the step ``summary.write(obj)`` persists ``obj`` as the file
    ``vN/<condition>~r<replicate>~<step>~<name>`` of the store (``result.artifacts`` has its
    path). A consumer uses the same object as (part of)
    its datasource: replicate ``i`` reads the producer's replicate ``i % upstream_replicates``,
    and a condition the producer never ran reads the producer's baseline.
    """

    is_artifact: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        loader: Callable[[Path], Any] | None = None,
        writer: Callable[[Any], bytes | str] | None = None,
        *,
        step: str | None = None,
    ) -> None:
        check_name("artifact", name, "Artifact")
        self.name = name
        self.loader = loader
        self.writer = writer
        self.step = step
        #: Name of the experiment that publishes this artifact (set by ``Experiment``).
        self.producer: str | None = None
        #: That experiment's store root (``ArtifactPlugin(root_dir=...)``), set with the name.
        self.producer_root: Path | None = None
        self._sink: ArtifactSink | None = None

    # -- producing -------------------------------------------------------------------------
    def bind(self, sink: ArtifactSink) -> Artifact:
        """A copy of this artifact whose :meth:`write` goes to ``sink`` (the running unit)."""
        bound = copy.copy(self)
        bound._sink = sink
        return bound

    def encode(self, obj: Any) -> bytes:
        """``obj`` as the bytes stored on disk, through ``writer`` if one was given."""
        payload = self.writer(obj) if self.writer is not None else obj
        if isinstance(payload, str):
            return payload.encode()
        if isinstance(payload, (bytes, bytearray, memoryview)):
            return bytes(payload)
        hint = (
            f"its writer {getattr(self.writer, '__name__', self.writer)!r} returned"
            if self.writer is not None
            else "the default writer accepts bytes or str, got"
        )
        raise TypeError(
            f"Artifact {self.name!r}: {hint} {type(payload).__name__}; give the artifact a "
            "writer that returns bytes or str, e.g. Artifact(name, writer=lambda o: json.dumps(o))"
        )

    def write(self, obj: Any) -> Path:
        """Persist ``obj`` for the running unit and return the file's path."""
        if self._sink is None:
            raise RuntimeError(
                f"Artifact {self.name!r} is not bound to a running unit; pass it to a step "
                "parameter annotated `Artifact` (e.g. write_summary(summary=out)) and call "
                "write() inside that step"
            )
        return self._sink.write_artifact(self, self.encode(obj))

    # -- consuming -------------------------------------------------------------------------
    def load(self, path: Path) -> Any:
        """Decode the file at ``path`` through ``loader`` (default: its bytes)."""
        if self.loader is None:
            return path.read_bytes()
        try:
            return self.loader(path)
        except Exception as exc:
            name = getattr(self.loader, "__qualname__", None) or repr(self.loader)
            raise LoaderError(
                f"loader {name!r} of {self!r} raised {type(exc).__name__}: {exc} (reading "
                f"{path}). Fix the loader, or the step that wrote the file"
            ) from exc

    def fetch(self, ctx: FrozenContext) -> Any:
        runtime = current_unit()
        if runtime is None:
            raise RuntimeError(
                f"Artifact {self.name!r} can only be fetched inside a running experiment"
            )
        return self.load(runtime.artifact_path(self, ctx))

    def artifacts(self) -> list[Artifact]:
        return [self]

    def fingerprint(self) -> str:
        loader = code_fingerprint(self.loader) if self.loader is not None else ""
        return combine(value_fingerprint(f"{self.producer}#{self.name}"), loader)

    def __repr__(self) -> str:
        where = f"{self.producer}#" if self.producer else ""
        return f"Artifact({where}{self.name})"
