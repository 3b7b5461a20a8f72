"""What running on a ``dask.distributed`` cluster needs beyond submitting tasks (SPEC §5).

- :func:`connect`: reach the scheduler named by an address, a scheduler file or Dask's own
  configuration, and turn every way that can go wrong into one :class:`ClusterError` that
  names the scheduler and the fix;
- :func:`wait_for_workers`: a scheduler with no workers is waited for, with a bound;
- :class:`StoreProbe`, :class:`StoreCheck`: every worker proves it sees the store before any
  unit runs; one that joins mid-run and cannot see it runs no unit;
- :class:`ClusterWatch`: which units were on a worker that was lost (re-run elsewhere).

This module imports ``distributed``: the executor imports it only when a Dask run starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import json
import logging
import os
import socket
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
from distributed import Client, get_worker
from distributed.comm import parse_address
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.versions import VersionMismatchWarning, error_message

from ..errors import ClusterError
from ._unit import UnitOutcome, UnitTask
from ._worker import Group, run_pickled_units

logger = logging.getLogger(__name__)

#: Name of the Dask config key (and, upper-cased, the environment variable) Dask reads an
#: address from.
CONFIG_KEY = "scheduler-address"
#: How many of Dask's connect timeouts a connection may take before the far end is taken to
#: be something other than a Dask scheduler (it accepted, then never answered).
HANDSHAKE_FACTOR = 2.0


@dataclass(frozen=True)
class Target:
    """Which scheduler a run uses, and where that choice came from (for messages)."""

    address: str
    source: str

    def __str__(self) -> str:
        return f"the Dask scheduler at {self.address} ({self.source})"


def connect_timeout() -> float:
    """Dask's connect timeout (``distributed.comm.timeouts.connect``), in seconds."""
    value = dask.config.get("distributed.comm.timeouts.connect")
    return float(dask.utils.parse_timedelta(value, default="seconds") or 30)


def resolve_target(address: str | None, scheduler_file: str | None) -> Target | None:
    """The scheduler to use, or None for a private LocalCluster.

    An explicit address or scheduler file wins; then Dask's configuration
    (``DASK_SCHEDULER_ADDRESS`` or ``scheduler-address`` in a Dask config file), as
    ``dask.distributed.Client()`` would read it.
    """
    if address is not None:
        return Target(address, "--scheduler / address=")
    if scheduler_file is not None:
        return Target(_read_scheduler_file(Path(scheduler_file)),
                      f"from the scheduler file {scheduler_file}")
    configured = dask.config.get(CONFIG_KEY, None)
    if configured:
        source = ("DASK_SCHEDULER_ADDRESS" if os.environ.get("DASK_SCHEDULER_ADDRESS")
                  else f"'{CONFIG_KEY}' in the Dask configuration")
        return Target(str(configured), f"from {source}")
    return None


def _read_scheduler_file(path: Path) -> str:
    fix = ("pass the file the scheduler wrote (`dask scheduler --scheduler-file FILE`), once "
           "it has started")
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterError(f"scheduler file {path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClusterError(f"scheduler file {path} cannot be read as JSON ({exc}); {fix}") \
            from None
    address = info.get("address") if isinstance(info, dict) else None
    if not isinstance(address, str):
        raise ClusterError(f"scheduler file {path} has no 'address' key; {fix}")
    return address


def check_address(target: Target) -> None:
    """Refuse an address Dask could not even try to connect to, before any waiting."""
    try:
        scheme, location = parse_address(target.address)
    except ValueError as exc:
        raise ClusterError(f"{target}: not an address ({exc}); {_ADDRESS_FORM}") from None
    if scheme not in ("tcp", "tls", "ws", "wss", "ucx", "inproc"):
        raise ClusterError(
            f"{target}: protocol '{scheme}://' is not one a Dask scheduler speaks; use the "
            f"address the scheduler prints at start (tcp://HOST:PORT, or tls:// on a secured "
            f"cluster), not the dashboard's http:// link"
        )
    host, _, port = location.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"{target}: malformed address; {_ADDRESS_FORM}")


_ADDRESS_FORM = "an address looks like tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786"


def connect(target: Target) -> Client:
    """A client connected to ``target`` (blocking; run it in a thread).

    Raises :class:`ClusterError` where the scheduler cannot be reached within Dask's connect
    timeout, or where the client's packages differ from the cluster's.
    """
    check_address(target)
    timeout = connect_timeout()
    with warnings.catch_warnings():
        # Dask only warns about mismatched versions; check_versions() refuses them instead.
        warnings.simplefilter("ignore", VersionMismatchWarning)
        try:
            client = Client(target.address, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"cannot reach {target} within {timeout:g} s ({exc}). Check that the scheduler "
                "is running and that this machine can reach that host and port; Dask's "
                "timeout is distributed.comm.timeouts.connect (environment: "
                "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=60s)"
            ) from None
    try:
        check_versions(client, target)
    except BaseException:
        client.close()
        raise
    return client


def not_a_scheduler(target: Target, waited: float) -> ClusterError:
    """The error for a peer that accepted the connection but never spoke Dask's protocol."""
    return ClusterError(
        f"{target} accepted the connection but did not answer as a Dask scheduler within "
        f"{waited:g} s; check that this is the scheduler's address (port 8786 by default), not "
        "the dashboard's or another service's"
    )


def check_versions(client: Client, target: Target) -> None:
    """Refuse a cluster whose packages differ from the client's (Dask itself only warns)."""
    versions: Any = client.get_versions(check=False)
    table = error_message(versions["scheduler"], versions["workers"], versions["client"])
    if table["warning"]:
        raise ClusterError(
            f"{target} runs other versions of packages than this client, which breaks sending "
            f"units to it: install the cluster's versions here (or the other way round) and "
            f"run again. Dask reports:\n{table['warning']}"
        )


def wait_for_workers(client: Client, target: Target, seconds: float,
                     say: Callable[[str], None]) -> int:
    """The number of workers, once there is at least one (blocking; run it in a thread)."""
    workers = len(client.scheduler_info().get("workers", {}))
    if workers:
        return workers
    say(f"waiting up to {seconds:g} s for workers to join {target}")
    try:
        client.wait_for_workers(1, timeout=seconds)
    except (TimeoutError, OSError):
        raise ClusterError(
            f"no workers: none joined {target} within {seconds:g} s. Start some "
            f"(`dask worker {target.address}`, or `dask worker --scheduler-file FILE`), or wait "
            "longer with --wait-for-workers SECONDS"
        ) from None
    return max(1, len(client.scheduler_info().get("workers", {})))


# -- the store, as every worker sees it -------------------------------------------------------
def _check_probes(probes: Sequence[tuple[str, str]]) -> str | None:
    """None if every probe file reads back its token here, else what is wrong."""
    for path, token in probes:
        try:
            seen = Path(path).read_text()
        except OSError as exc:
            return f"cannot read {path} ({type(exc).__name__})"
        if seen != token:
            return f"{path} holds another store's probe"
    return None


def _probe_here(probes: Sequence[tuple[str, str]]) -> tuple[str, str | None]:
    """Run on a worker by ``client.run``: its host, and what it cannot see (None: all)."""
    return f"{socket.gethostname()} pid {os.getpid()}", _check_probes(probes)


#: per store check (its plugin name), what this worker process cannot see of the store
_BLIND: dict[str, str] = {}


class StoreCheck(WorkerPlugin):
    """Checks the probe files on a worker when registered, and on every worker that joins
    later before it takes any task (Dask runs a plugin's setup before it handles the
    scheduler's messages); a worker that cannot see them runs no unit of this run
    (:func:`run_units_on_worker` hands them back unrun)."""

    def __init__(self, name: str, probes: list[tuple[str, str]]) -> None:
        self.name = name
        self.probes = probes

    def setup(self, worker: Any) -> None:
        problem = _check_probes(self.probes)
        if problem is not None:
            _BLIND[self.name] = problem
            logger.warning("crystallize: this worker cannot see the run's store (%s); it runs "
                           "no unit of that run", problem)

    def teardown(self, worker: Any) -> None:
        _BLIND.pop(self.name, None)


class StoreProbe:
    """The probe files of one run: written by the client, read on every worker, removed after."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = sorted(set(roots))
        self.plugin_name = f"crystallize-store-check-{uuid.uuid4().hex}"
        self.probes: list[tuple[str, str]] = []

    def write(self) -> None:
        for root in self.roots:
            root.mkdir(parents=True, exist_ok=True)
            token = uuid.uuid4().hex
            path = root / f".crystallize-probe-{token}"
            path.write_text(token)
            self.probes.append((str(path), token))

    def remove(self) -> None:
        for path, _ in self.probes:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def verify(self, client: Client, target: Target) -> None:
        """Register the check for joining workers, then refuse the run if a worker is blind."""
        client.register_plugin(StoreCheck(self.plugin_name, self.probes), name=self.plugin_name)
        seen = client.run(_probe_here, self.probes, on_error="return")
        blind = {}
        for worker, answer in seen.items():
            if isinstance(answer, BaseException):
                blind[worker] = f"the check failed: {answer!r}"
            elif answer[1] is not None:
                blind[worker] = f"{answer[0]}: {answer[1]}"
        if blind:
            stores = ", ".join(str(r) for r in self.roots)
            lines = "; ".join(f"{w} ({why})" for w, why in sorted(blind.items()))
            raise ClusterError(
                f"workers of {target} cannot see the store {stores}, so the units they ran "
                f"would write where this machine never reads: {lines}. Put the store on a "
                "filesystem every worker mounts (NFS, a cluster filesystem) and run from a path "
                "that is the same on every machine; nothing was run"
            )

    def unregister(self, client: Client) -> None:
        with contextlib.suppress(Exception):  # a lost scheduler keeps no plugin anyway
            client.unregister_worker_plugin(self.plugin_name)


# -- worker loss -------------------------------------------------------------------------------
class ClusterWatch:
    """Collects, from the scheduler's events, which task keys were on workers that were lost.

    The handler runs in the client's thread; :meth:`lost_during` is read from the run's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lost: dict[str, list[str]] = {}

    def handle(self, event: tuple[float, Any]) -> None:
        msg = event[1]
        if not isinstance(msg, dict) or msg.get("action") != "remove-worker" or \
                msg.get("expected"):
            return
        # Other clients' tasks on a shared cluster are none of this run's business.
        ours = [str(k) for k in msg.get("processing-tasks", ())
                if str(k).startswith(run_units_on_worker.__name__)]
        with self._lock:
            for key in ours:
                self._lost.setdefault(key, []).append(str(msg.get("worker")))

    def lost_during(self, key: str) -> list[str]:
        """The workers lost while they held task ``key`` (forgets them)."""
        with self._lock:
            return self._lost.pop(key, [])


def run_units_on_worker(
    groups: list[Group], check: str | None,
) -> tuple[str, list[bytes] | str]:
    """The Dask task of a batch: the worker's address, and the units' packed outcomes.

    ``check`` names the run's :class:`StoreCheck`: a worker that failed it runs nothing and
    returns what it cannot see instead, so that the client sends the units elsewhere.
    """
    address = get_worker().address
    problem = _BLIND.get(check or "")
    if problem is not None:
        return address, problem
    return address, run_pickled_units(groups)


def trip_key() -> str:
    """A fresh Dask key for one trip; :class:`ClusterWatch` knows this run's tasks by it."""
    return f"{run_units_on_worker.__name__}-{uuid.uuid4().hex}"


def start_trip(
    client: Client, key: str, args: tuple[list[Group], str | None],
    workers: list[str],
) -> cf.Future[tuple[str, list[bytes] | str]]:
    """Submit one :func:`run_units_on_worker` task as ``key`` and fetch its result, both on the
    client's own event loop; the returned future is set there once the result is here.

    A synchronous client's ``result()`` costs a hop to Dask's callback thread, one to a thread
    that blocks in ``result()`` and one into the client's loop for every trip; from inside its
    loop the trip is one coroutine. ``workers``: where to prefer it (empty: anywhere).
    """
    async def trip() -> tuple[str, list[bytes] | str]:
        fut = client.submit(run_units_on_worker, *args, key=key, workers=workers or None,
                            allow_other_workers=bool(workers))
        # Never cancelled itself: a gather cancelled midway leaves tasks of Dask's behind that
        # fail unread (logged as "Task exception was never retrieved"). When the trip is given
        # up (a timeout, a stopped run) the release below ends it, and its error is dropped.
        fetch = asyncio.ensure_future(client.gather(fut, asynchronous=True))
        fetch.add_done_callback(_drop_outcome)
        try:
            return await asyncio.shield(fetch)
        finally:
            # At once rather than when the future object is collected: the cluster forgets
            # the result, and a given-up trip's task is dropped.
            fut.release()

    loop: Any = client.loop  # tornado's IOLoop over asyncio, in Dask's own thread
    return asyncio.run_coroutine_threadsafe(trip(), loop.asyncio_loop)


def _drop_outcome(fetch: asyncio.Future[Any]) -> None:
    if not fetch.cancelled():
        fetch.exception()  # read, so that asyncio does not report it as never retrieved


def send_promptly(client: Client) -> Callable[[], None]:
    """Make the client send each message to the scheduler at once; returns what undoes it.

    A client batches its messages for 10 ms, so a trip submitted less than 10 ms after the
    previous message (the release of the last result) waits out the rest: on a chain of small
    units, most of each node's time. Undone after the run, for a client the caller lent us.
    """
    comm: Any = getattr(client, "scheduler_comm", None)
    interval = getattr(comm, "interval", None)
    if not isinstance(interval, (int, float)):  # another Dask's internals: leave them be
        return lambda: None
    comm.interval = 0.0

    def undo() -> None:
        comm.interval = interval

    return undo


def blind_worker_error(worker: str, problem: str) -> ClusterError:
    """The error of units that only a worker blind to the store was there to run."""
    return ClusterError(
        f"worker {worker} joined the cluster during the run but cannot see the store "
        f"({problem}), and no other worker took these units, so they did not run. Put the "
        "store on a filesystem every worker mounts, at the same path, or stop that worker"
    )


def check_outputs_visible(outcome: UnitOutcome, task: UnitTask, worker: str) -> None:
    """Fail a unit whose artifacts the client cannot see in its own view of the store.

    The store check at the start makes this rare (a mount lost mid-run, a worker's cache);
    without it, such a unit would count as complete while its files exist only elsewhere.
    """
    if outcome.error is not None:
        return
    version_dir = Path(task.version_path)
    missing = [f"{record.path} ({problem})" for record in outcome.artifacts.values()
               if (problem := record.problem(version_dir)) is not None]
    if missing:
        outcome.error = ClusterError(
            f"worker {worker} wrote {', '.join(missing)} under {version_dir}, but this "
            "machine does not see it so: the store is not shared with that worker. Put the "
            "store on a filesystem every worker mounts, at the same path"
        )
