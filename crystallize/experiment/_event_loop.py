"""Refusing a blocking ``run()`` inside a running event loop, where it would deadlock."""

from __future__ import annotations

import asyncio
import sys


def refuse_inside_event_loop() -> None:
    library = _running_event_loop()
    if library is None:
        return
    raise RuntimeError(
        f"run() was called inside a running {library} event loop, where it cannot block; "
        "use `await graph.arun(...)` (or `await experiment.arun(...)`) instead"
    )


def _running_event_loop() -> str | None:
    """The event loop library running in this thread, if any.

    A trio run has always imported trio, so looking it up in ``sys.modules`` answers without
    importing it (or sniffio, which anyio no longer brings).
    """
    try:
        asyncio.get_running_loop()
        return "asyncio"
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_run():
        return "trio"
    return None
