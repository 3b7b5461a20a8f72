"""The process executor's workers: one socket per worker process, read on the event loop.

:class:`concurrent.futures.ProcessPoolExecutor` hands each call to a feeder thread and its result
to a manager thread, whose callback then wakes the event loop: on two busy cores that cost about
0.5 ms per round trip, most of it threads waiting for the GIL, against 0.3 ms of work for a tiny
unit. Here the event loop writes a request straight into an idle worker's socket and waits for
the socket to turn readable, as for any network peer: no thread on the way.

A worker keeps the experiments it has unpickled (see :func:`~._worker.run_pickled_units`), and the
parent remembers which, so an experiment's pickle travels to each worker once, not per unit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
import weakref
from typing import Any

import anyio

from ..errors import RemoteTraceback
from ._unit import format_traceback, portable
from ._worker import Group, missing_experiments, remember, run_pickled_units

#: A message is its length (8 bytes, network order) and its pickled body.
_HEADER = struct.Struct("!Q")
#: The key of a worker's reply that names experiments it no longer holds: send their pickles.
_RESEND = "resend"

#: The parent's end of every worker socket this process made. A worker is forked with copies of
#: them all and closes them first: a worker must see its socket end when the parent closes it.
_PARENT_ENDS: weakref.WeakSet[socket.socket] = weakref.WeakSet()


class WorkerDied(Exception):
    """A worker process ended before it replied."""


def _alive(starter: int) -> bool:
    """Whether the process that started this worker still runs. Asked of the starter itself:
    with a forkserver, the worker's parent is the server, not the starter."""
    if sys.platform == "win32":  # pragma: no cover - there os.kill would terminate it
        return os.getppid() == starter
    try:
        os.kill(starter, 0)
    except ProcessLookupError:
        return False
    return True


def exit_with_parent(parent: int) -> None:
    """End this worker as soon as the process that started it dies.

    Without it, workers of a SIGKILLed parent would run their unit to the end and then wait for
    work forever. On Linux the kernel delivers SIGKILL on the parent's death (no thread in the
    worker, so steps can still fork; a forkserver, the parent then, ends with the starter);
    elsewhere a daemon thread polls the starter.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    else:  # pragma: no cover - macOS, Windows
        def watch() -> None:
            while _alive(parent):
                time.sleep(0.25)
            os._exit(1)

        threading.Thread(target=watch, name="crystallize-parent-watch", daemon=True).start()
    if not _alive(parent):  # it died before the signal was armed
        os._exit(1)


def _serve(sock: socket.socket, parent: int) -> None:
    """A worker's life: run the units of each request and reply, until the parent hangs up."""
    exit_with_parent(parent)
    for inherited in list(_PARENT_ENDS):
        inherited.close()
    if hasattr(os, "register_at_fork"):
        # A process a step forks must not hold this socket: if this worker died (the OOM
        # killer) while such a child lived on, the parent would never see the socket close.
        os.register_at_fork(after_in_child=sock.close)
    try:
        while (request := _read(sock)) is not None:
            groups = pickle.loads(request)
            reply: Any = {_RESEND: missing_experiments(groups)}
            if not reply[_RESEND]:
                try:
                    reply = run_pickled_units(groups)
                except Exception as exc:
                    reply = (portable(exc), format_traceback(exc))
            body = pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
            sock.sendall(_HEADER.pack(len(body)) + body)
    except KeyboardInterrupt:  # Ctrl-C reaches workers too; the parent stops the run
        pass


def _read(sock: socket.socket) -> bytearray | None:
    """The next message from a blocking socket; None once the other end has closed."""
    header = _read_exactly(sock, _HEADER.size)
    return None if header is None else _read_exactly(sock, _HEADER.unpack(header)[0])


def _read_exactly(sock: socket.socket, size: int) -> bytearray | None:
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        count = sock.recv_into(view[got:])
        if count == 0:
            return None
        got += count
    return data


def _ended(process: Any, seconds: float) -> int | None:
    """The exit code of ``process`` once it has ended, waiting up to ``seconds``; None if it
    still runs. Polled, not joined: ``join`` with a timeout waits for a pipe that a child the
    worker left behind may hold open."""
    deadline = time.monotonic() + seconds
    while process.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.01)
    code: int | None = process.exitcode
    return code


class _Worker:
    """One worker process and the parent's non-blocking end of its socket."""

    def __init__(self, context: Any) -> None:
        ours, theirs = socket.socketpair()
        _PARENT_ENDS.add(ours)
        try:
            self.process = context.Process(
                target=_serve, args=(theirs, os.getpid()), name="crystallize-worker")
            self.process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        #: the experiments this worker holds unpickled, as far as the parent knows
        self.holds: dict[str, None] = {}

    async def call(self, groups: list[Group]) -> Any:
        """Send a request, return the worker's reply; raises :class:`WorkerDied`."""
        reply = await self._ask([(key, None if key in self.holds else blob, tasks)
                                 for key, blob, tasks in groups])
        if isinstance(reply, dict):  # it forgot some of them
            reply = await self._ask(groups)
        for key, _, _ in groups:
            remember(self.holds, key, None)
        return reply

    async def _ask(self, groups: list[Group]) -> Any:
        body = pickle.dumps(groups, pickle.HIGHEST_PROTOCOL)
        try:
            await self._write(_HEADER.pack(len(body)) + body)
            return pickle.loads(await self._receive())
        except (ConnectionError, EOFError):
            raise WorkerDied(await self._epitaph()) from None

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                await anyio.wait_writable(self.sock)

    async def _receive(self) -> memoryview:
        # Waits before it reads (a reply is never there yet) and reads a small reply whole in
        # one call: every system call here lets other threads take the GIL, and getting it
        # back can take longer than the call.
        data = bytearray()
        size, sized = _HEADER.size, False
        while len(data) < size:
            await anyio.wait_readable(self.sock)
            try:
                chunk = self.sock.recv(max(size - len(data), 1 << 16))
            except BlockingIOError:
                continue
            if not chunk:
                raise EOFError
            data += chunk
            if not sized and len(data) >= size:
                size, sized = size + _HEADER.unpack_from(data)[0], True
        return memoryview(data)[_HEADER.size:]

    async def _epitaph(self) -> str:
        """What became of a worker that hung up."""
        code = await anyio.to_thread.run_sync(_ended, self.process, 1.0)
        how = ("is still running but closed its connection" if code is None
               else f"was killed by signal {-code}" if code < 0 else f"exited with code {code}")
        return f"the worker process (pid {self.process.pid}) {how} while running this unit"

    def stop(self, *, now: bool) -> None:
        """Hang up (an idle worker then exits on its own); ``now``: terminate it as well."""
        self.sock.close()
        if now:
            with contextlib.suppress(Exception):
                self.process.terminate()


class WorkerPool:
    """``size`` worker processes, started by :meth:`start` (or as units first need them)."""

    def __init__(self, size: int, context: Any) -> None:
        self.size = size
        self.context = context
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._slots = anyio.Semaphore(size)

    def start(self) -> None:
        """Start every worker that is not running yet, now."""
        while len(self._workers) < self.size:
            self._idle.append(self._new())

    def _new(self) -> _Worker:
        worker = _Worker(self.context)
        self._workers.append(worker)
        return worker

    async def call(self, groups: list[Group]) -> list[bytes]:
        """Run the units of ``groups`` (with every experiment's pickle) on an idle worker:
        their packed outcomes, in order. Raises :class:`WorkerDied` if the worker died, and the
        exception the worker met if it could not run them."""
        async with self._slots:
            # The worker used last: the likeliest to hold these experiments already.
            worker = self._idle.pop() if self._idle else self._new()
            try:
                reply = await worker.call(groups)
            except BaseException:
                # It died, or this call was cancelled midway and its reply would be out of
                # step with the next request: either way it serves no one any more.
                self._workers.remove(worker)
                worker.stop(now=True)
                raise
            self._idle.append(worker)
        if isinstance(reply, tuple):
            error, text = reply
            error.__cause__ = RemoteTraceback(text)
            raise error
        packed: list[bytes] = reply
        return packed

    def terminate(self) -> None:
        """Stop every worker at once, also those running units."""
        workers, self._workers, self._idle = self._workers, [], []
        for worker in workers:
            worker.stop(now=True)

    async def aclose(self) -> None:
        """Let every worker exit, and wait for them (each is idle once no call is pending)."""
        workers, self._workers, self._idle = self._workers, [], []
        for worker in workers:
            worker.stop(now=False)

        def join() -> None:
            for worker in workers:
                if _ended(worker.process, 5.0) is None:
                    worker.process.kill()
                    worker.process.join()

        await anyio.to_thread.run_sync(join)
