"""Where a run's store work runs: on the event loop while it is quick, else on one thread.

A tiny node's store work (claim a version, write its records and marker) takes a fraction of a
millisecond on a local disk: less than handing it to a thread, and a thread running Python
beside the event loop makes the two pass the GIL back and forth. On a slow file system
(network storage, a loaded disk) the same work would stall the event loop, and with it the
dispatch of every other experiment's units: there it moves to a thread. Work for a store that
syncs every write always goes to threads, several at once, since it waits on the disk.

A root that turns quick again has its next work on the loop at once, even while pieces queued
earlier still run on the thread: the store is safe under concurrent writers (its locks serve
other processes too), and keeping new work on the thread until that queue drained kept a busy
graph there for good (side by side, W5-2000 took 1.33 × as long).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.lowlevel

_T = TypeVar("_T")

#: Store work that took longer than this (seconds) goes to a thread from then on, for its root.
INLINE_LIMIT = 0.002


class StoreLane:
    """One graph run's way of running store work; see the module doc."""

    def __init__(self) -> None:
        self._thread = anyio.CapacityLimiter(1)
        #: store roots whose last piece of work was slow, and so runs on the thread
        self._slow: set[Path] = set()

    async def run(self, root: Path, fn: Callable[[], _T], *, fsync: bool = False) -> _T:
        """``fn()``, work for the store at ``root`` (``fsync``: one that syncs every write)."""
        if fsync:
            return await anyio.to_thread.run_sync(fn)
        took = [0.0]

        def timed() -> _T:  # measured where it runs, without the wait for a thread
            started = time.perf_counter()
            try:
                return fn()
            finally:
                took[0] = time.perf_counter() - started

        try:
            if root in self._slow:
                return await anyio.to_thread.run_sync(timed, limiter=self._thread)
            # A cancelled run stops here, as it would at a thread hop.
            await anyio.lowlevel.checkpoint_if_cancelled()
            return timed()
        finally:
            self._note(root, took[0])

    def _note(self, root: Path, seconds: float) -> None:
        if seconds > INLINE_LIMIT:
            self._slow.add(root)
        else:
            self._slow.discard(root)

