"""The step cache for ``@pipeline_step(cacheable=True)``.

An entry is keyed by the step's code, its explicit parameters and its input, then matched on the
values of exactly the context keys the step read when the entry was computed (injected
parameters count as reads). Entries live under the store root, so every worker process and every
later run on the machine shares them. A file lock per key makes concurrent workers that need
the same entry compute it once; a corrupt entry is recomputed and replaced.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle
from filelock import FileLock

from ..fingerprint import combine, value_fingerprint
from ._store import atomic_write

if TYPE_CHECKING:
    from ..model import FrozenContext, PipelineStep
    from ..running import UnitRun


def _input_digest(data: Any) -> str | None:
    try:
        return hashlib.sha256(cloudpickle.dumps(data)).hexdigest()
    except Exception:
        return None  # unpicklable input: the step simply is not cached


#: The step cache's folder under a store root.
CACHE_DIR = ".crystallize_cache"


class StepCache:
    """Cache entries under ``root/<key[:2]>/<key>/<reads>.pkl``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _read_fingerprints(self, ctx: FrozenContext, keys: list[str]) -> dict[str, str]:
        return {k: value_fingerprint(ctx.get(k)) for k in keys}

    def _lookup(self, entry_dir: Path, ctx: FrozenContext) -> dict[str, Any] | None:
        if not entry_dir.exists():
            return None
        for path in entry_dir.glob("*.pkl"):
            try:
                entry = pickle.loads(path.read_bytes())
                reads = entry["reads"]
            except Exception:
                path.unlink(missing_ok=True)  # corrupt: recompute below
                continue
            if self._read_fingerprints(ctx, sorted(reads)) == reads:
                return entry
        return None

    def call(
        self, run: UnitRun, step: PipelineStep, data: Any, ctx: FrozenContext, args: tuple[Any, ...]
    ) -> Any:
        """Return the step's result from the cache, computing and storing it on a miss."""
        digest = _input_digest(data)
        if digest is None:
            return step.fn(*args, **step.resolve(ctx, run.bind))
        parts = step.fingerprint_parts()
        key = combine(parts["code"], parts["params"], digest)
        entry_dir = self.root / key[:2] / key
        entry_dir.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(entry_dir.parent / f"{key}.lock"):
            entry = self._lookup(entry_dir, ctx)
            if entry is not None:
                for name, payload in entry["writes"]:
                    run.write_artifact(run.experiment.output_for(name), payload)
                for name, value in entry["metrics"].items():
                    ctx.record(name, value)
                run.outcome.notes.append(f"{step.name}: cache hit")
                return entry["result"]
            before = ctx.metrics
            with run.capturing_writes() as writes, ctx._tracking_reads() as tracked:
                result = step.fn(*args, **step.resolve(ctx, run.bind))
            reads = sorted(tracked)
            recorded = {k: v for k, v in ctx.metrics.items() if before.get(k, _MISSING) != v}
            reads_fp = self._read_fingerprints(ctx, reads)
            try:
                blob = cloudpickle.dumps(
                    {"reads": reads_fp, "result": result, "writes": writes, "metrics": recorded}
                )
            except Exception:
                return result  # an unpicklable result cannot be cached, but the step succeeded
            entry_dir.mkdir(exist_ok=True)
            atomic_write(entry_dir / f"{value_fingerprint(reads_fp)[:32]}.pkl", blob)
            return result


_MISSING = object()
