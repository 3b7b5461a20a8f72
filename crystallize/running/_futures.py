"""Awaiting ``concurrent.futures``-style futures (a process pool's, a Dask client's) from the
event loop, without a thread per wait."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import anyio.lowlevel


async def wait_future(fut: Any) -> Any:
    """The result of a ``concurrent.futures``-style future, awaited with :func:`wait_done`."""
    await wait_done(fut)
    return fut.result()


async def wait_done(fut: Any) -> None:
    """Await a ``concurrent.futures``-style future without tying up a thread while it runs.

    The done-callback runs in whichever thread completes the future (a pool's manager thread, a
    Dask client thread) and only *schedules* the wake-up on the event loop. It must never wait
    for the loop: after a cancelled run the loop is gone, and a callback blocked on it would
    hang that thread, and with it the interpreter's exit, forever.
    """
    event = anyio.Event()
    token = anyio.lowlevel.current_token()

    def done(_: Any) -> None:
        # RunFinishedError (a RuntimeError): the loop has finished, nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            token.backend_class.run_sync_soon(event.set, (), token.native_token)

    fut.add_done_callback(done)
    try:
        await event.wait()
    except BaseException:
        fut.cancel()
        raise
