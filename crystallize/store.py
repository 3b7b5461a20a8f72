"""The versioned on-disk store: ``<root>/<experiment>/vN/``.

Layout of one version::

    vN/metadata.json                              # written last; status "complete" or "failed"
    vN/<condition>/results.json                   # metrics, errors, artifact index
    vN/<condition>/.crystallize_complete          # only after results.json and its artifacts
    vN/replicate_<r>/<condition>/<step>/<file>    # artifacts, written by the units
    vN/.writing.lock                              # held by the process writing vN
    vN/.readers/<id>.lock                         # held by each process reading vN

Crash consistency comes from ordering and atomic renames: every file is written to a temporary
name and renamed into place, a marker only after the files it vouches for, and
``metadata.json`` (status ``complete``) only after every marker. A version without a complete
``metadata.json`` is never used. Older versions are pruned only after a newer one is complete.

Concurrency comes from kernel file locks (``filelock``), which the OS releases when a holder
dies, so a crashed process never blocks a later one:

- ``<experiment>/.lock`` is held briefly to allocate a version, take a reader lease, or prune;
- ``vN/.writing.lock`` marks a version as being written (pruning skips it while it is held);
- ``vN/.readers/*.lock`` are reader leases (pruning skips a version with a live lease);
- ``<experiment>/.run.lock`` serialises computing the experiment under ``resume``, so a second
  process waits for the first and then reuses its version instead of computing it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

METADATA = "metadata.json"
RESULTS = "results.json"
MARKER = ".crystallize_complete"
_VERSION = re.compile(r"^v(\d+)$")


def atomic_write(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename or create) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any, *, fsync: bool = False) -> None:
    atomic_write(path, json.dumps(obj, indent=1, default=str).encode(), fsync=fsync)


def _try_lock(path: Path) -> FileLock | None:
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return None
    return lock


def _held_by_someone(path: Path) -> bool:
    """True if another holder has the lock at ``path`` (ours would be held through another fd)."""
    lock = _try_lock(path)
    if lock is None:
        return True
    lock.release()
    return False


@dataclass
class StoredVersion:
    """A version read from disk: its number, directory and ``metadata.json``."""

    number: int
    path: Path
    metadata: dict[str, Any]

    @property
    def complete(self) -> bool:
        return self.metadata.get("status") == "complete"

    def condition_results(self, condition: str) -> dict[str, Any] | None:
        """The condition's ``results.json`` if it carries a completion marker, else None."""
        cdir = self.path / condition
        if not (cdir / MARKER).exists():
            return None
        try:
            return json.loads((cdir / RESULTS).read_bytes())
        except (OSError, ValueError):
            return None

    def missing_artifacts(self, results: dict[str, Any], replicates: int) -> list[str]:
        """Artifact files the condition's results list for its first ``replicates`` that are gone."""
        missing = []
        for paths in results.get("artifacts", {}).values():
            for rel in paths[:replicates]:
                if rel is not None and not (self.path / rel).exists():
                    missing.append(rel)
        return missing


@dataclass
class VersionWriter:
    """A version being written by this process; holds its ``.writing.lock``."""

    number: int
    path: Path
    fsync: bool
    _lock: FileLock
    conditions: list[str] = field(default_factory=list)

    def reuse(self, source: StoredVersion, condition: str, results: dict[str, Any]) -> None:
        """Bring a complete condition over from ``source`` without recomputing it.

        Artifacts are hard-linked (copied where links are impossible), so the source version can
        later be pruned without affecting this one.
        """
        for paths in results.get("artifacts", {}).values():
            for rel in paths:
                if rel is None:
                    continue
                dst = self.path / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source.path / rel, dst)
                except FileExistsError:
                    pass
                except OSError:
                    shutil.copy2(source.path / rel, dst)

    def finish_condition(self, condition: str, results: dict[str, Any], *, complete: bool) -> None:
        """Write the condition's ``results.json``, then its marker if ``complete``."""
        cdir = self.path / condition
        write_json(cdir / RESULTS, results, fsync=self.fsync)
        if complete:
            atomic_write(cdir / MARKER, b"", fsync=self.fsync)
        self.conditions.append(condition)

    def publish(self, metadata: dict[str, Any]) -> StoredVersion:
        """Write ``metadata.json`` last: from here on the version is used by resume and readers."""
        write_json(self.path / METADATA, metadata, fsync=self.fsync)
        return StoredVersion(self.number, self.path, metadata)

    def close(self) -> None:
        self._lock.release()


class ReaderLease:
    """A live claim that a version is being read; pruning leaves the version alone."""

    def __init__(self, lock: FileLock, path: Path) -> None:
        self._lock = lock
        self._path = path

    def release(self) -> None:
        self._lock.release()
        with contextlib.suppress(OSError):
            self._path.unlink()


class ExperimentStore:
    """All versions of one experiment under ``<root>/<experiment>/``."""

    def __init__(self, root: Path, experiment: str, *, keep: int = 1, fsync: bool = False):
        self.root = root
        self.name = experiment
        self.dir = root / experiment
        self.keep = keep
        self.fsync = fsync

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with FileLock(self.dir / ".lock"):
            yield

    @property
    def run_lock_path(self) -> Path:
        return self.dir / ".run.lock"

    def version_numbers(self) -> list[int]:
        """Every version directory's number, newest first."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        numbers = [int(m.group(1)) for n in names if (m := _VERSION.match(n))]
        return sorted(numbers, reverse=True)

    def read(self, number: int) -> StoredVersion | None:
        path = self.dir / f"v{number}"
        try:
            meta = json.loads((path / METADATA).read_bytes())
        except (OSError, ValueError):
            return None
        return StoredVersion(number, path, meta)

    def newest_complete(self) -> StoredVersion | None:
        """The newest version whose ``metadata.json`` says complete, or None."""
        for number in self.version_numbers():
            version = self.read(number)
            if version is not None and version.complete:
                return version
        return None

    def allocate(self) -> VersionWriter:
        """Claim a fresh ``vN`` (never one another process is writing or has written)."""
        with self._locked():
            numbers = self.version_numbers()
            number = (numbers[0] + 1) if numbers else 0
            while True:
                path = self.dir / f"v{number}"
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    number += 1
            lock = FileLock(path / ".writing.lock")
            lock.acquire()
        return VersionWriter(number, path, self.fsync, lock)

    def lease(self, number: int) -> ReaderLease | None:
        """Protect complete version ``number`` from pruning while it is read; None if gone."""
        with self._locked():
            version = self.read(number)
            if version is None or not version.complete:
                return None
            readers = version.path / ".readers"
            readers.mkdir(exist_ok=True)
            path = readers / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.lock"
            lock = FileLock(path)
            lock.acquire()
        return ReaderLease(lock, path)

    def _in_use(self, path: Path) -> bool:
        if _held_by_someone(path / ".writing.lock"):
            return True
        readers = path / ".readers"
        live = False
        for lease in readers.glob("*.lock") if readers.exists() else ():
            if _held_by_someone(lease):
                live = True
            else:
                with contextlib.suppress(OSError):
                    lease.unlink()  # left by a reader that died
        return live

    def prune(self) -> list[int]:
        """Remove versions beyond the newest ``keep`` complete ones, and dead unfinished ones.

        Skips any version a live process is writing or reading. Returns the removed numbers.
        """
        removed: list[int] = []
        trash: list[Path] = []
        with self._locked():
            kept = 0
            for number in self.version_numbers():
                version = self.read(number)
                path = self.dir / f"v{number}"
                if version is not None and version.complete:
                    kept += 1
                    if kept <= self.keep:
                        continue
                if self._in_use(path):
                    continue
                # Renaming first makes removal atomic for readers: the version vanishes whole.
                target = self.dir / f".trash-v{number}-{uuid.uuid4().hex[:8]}"
                try:
                    os.rename(path, target)
                except OSError:
                    continue
                trash.append(target)
                removed.append(number)
        for path in trash:
            shutil.rmtree(path, ignore_errors=True)
        return removed

    def versions_summary(self) -> list[StoredVersion | int]:
        """Each version: a StoredVersion when its metadata is readable, else its bare number."""
        return [self.read(n) or n for n in self.version_numbers()]
