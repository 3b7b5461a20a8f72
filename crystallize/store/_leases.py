"""Leases: which versions each running graph reads or writes, held by kernel file locks.

See the module doc of ``_store`` for how a lease and a pruner meet.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
import warnings
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def held_by_someone(path: Path) -> bool:
    """True if some holder (another process, or this one through another handle) has the lock.

    Probes without creating the file (a probe must not leave a lock file behind, nor need a
    writable store).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if fcntl is None:  # pragma: no cover - Windows: filelock's own probe
            lock = FileLock(path, timeout=0)
            try:
                lock.acquire()
            except Timeout:
                return True
            lock.release()
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class StoreWarning(UserWarning):
    """Something in the store was skipped or could not be protected; the message says what."""


def _store_warning(message: str) -> None:
    warnings.warn(message, StoreWarning, stacklevel=3)


def unusable_lock(path: Path, exc: OSError) -> PermissionError:
    """The error for a lock file this process may not open, saying what to do about it."""
    return PermissionError(
        exc.errno, f"cannot take this lock file ({exc.strerror}); it holds no data: make it "
        "writable (chmod u+w) or delete it", str(path),
    )


class LeaseBook:
    """One running graph's claims on versions under a store root.

    Holds ``<root>/.leases/<id>.lock`` for as long as the run lasts, and appends a line to
    ``<id>.txt`` for each version the run writes or reads. Appending is a single ``write``, so a
    lease costs no lock round trip. Where the store cannot be written (read-only, full, or
    ``.leases`` is a symbolic link), the claims stay in this process only, with a warning: the
    run can still read, but another process could prune what it reads.
    """

    _open: dict[Path, list[LeaseBook]] = {}

    def __init__(self, root: Path) -> None:
        self.root = root
        # Keyed by experiment, so releasing one experiment's versions does not walk every
        # claim of the run (a 2,000-node graph releases 2,000 times).
        self._claims: dict[str, set[int]] = {}
        # Claimed and released from the store's worker threads and the event loop at once
        # (one experiment allocating while another publishes).
        self._mutex = threading.Lock()
        self.warning: str | None = None
        self._fd: int | None = None
        folder = root / ".leases"
        stem = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.path = folder / f"{stem}.txt"
        self._lock = FileLock(folder / f"{stem}.lock")
        try:
            if folder.is_symlink():
                raise StoreError(f"{folder} is a symbolic link; crystallize writes no lease "
                                 "through it")
            folder.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            if self._lock.is_locked:
                self._drop_lock()
            self.warning = (
                f"store {root}: cannot write a lease ({exc}); reading without one, so a "
                "`crystallize clean` or a run elsewhere may remove versions this run reads"
            )
            _store_warning(self.warning)
        LeaseBook._open.setdefault(root, []).append(self)

    @property
    def writable(self) -> bool:
        return self._fd is not None

    def claim(self, experiment: str, number: int) -> None:
        with self._mutex:
            numbers = self._claims.setdefault(experiment, set())
            if number not in numbers:
                if self._fd is not None:
                    os.write(self._fd, f"{experiment}/v{number}\n".encode())
                numbers.add(number)

    def release_replaced(self, experiment: str, current: int) -> None:
        """Stop protecting the experiment's other versions from this process's own pruning:
        ``current`` has replaced them, and this run reads them no more.

        Other processes still see the lines until the run ends: erring on the side of keeping.
        """
        with self._mutex:
            self._claims[experiment] = {current} & self._claims.get(experiment, set())

    def snapshot(self) -> set[str]:
        """The versions this run claims now (a copy: others may be claimed meanwhile)."""
        with self._mutex:
            return {f"{e}/v{n}" for e, numbers in self._claims.items() for n in numbers}

    def _drop_lock(self) -> None:
        # Unlinked while still held, so no other process can be holding the file we delete.
        with contextlib.suppress(OSError):
            Path(self._lock.lock_file).unlink()
        self._lock.release()

    def close(self) -> None:
        LeaseBook._open.get(self.root, []).remove(self)
        if self._fd is None:
            return
        os.close(self._fd)
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._drop_lock()

    @classmethod
    def live_claims(cls, root: Path) -> set[str]:
        """Every version claimed by a live run on ``root``, this process's included."""
        ours = cls._open.get(root, [])
        claims: set[str] = set().union(*(b.snapshot() for b in ours)) if ours else set()
        own = {b.path for b in ours}
        folder = root / ".leases"
        linked = folder.is_symlink()  # read the claims, but delete nothing through the link
        for txt in folder.glob("*.txt") if folder.is_dir() else ():
            if txt in own:
                continue
            lock = txt.with_suffix(".lock")
            if held_by_someone(lock):
                with contextlib.suppress(OSError):
                    claims.update(txt.read_text().split())
            elif not linked:  # left by a process that died
                for stale in (txt, lock):
                    with contextlib.suppress(OSError):
                        stale.unlink()
        return claims
