"""The versioned on-disk store: ``<root>/<experiment>/vN/``.

Layout of one version::

    vN/metadata.json                              # written last; status "complete" or "failed"
    vN/<condition>/results.json                   # metrics, errors, artifact index
    vN/<condition>/.crystallize_complete          # only after results.json and its artifacts
    vN/replicate_<r>/<condition>/<step>/<file>    # artifacts, written by the units
    vN/.doomed                                    # briefly, while a pruner decides

Crash consistency comes from ordering and atomic renames: every file is written to a temporary
name and renamed into place, a marker only after the files it vouches for, and
``metadata.json`` (status ``complete``) only after every marker. A version without a complete
``metadata.json`` is never used. Older versions are pruned only after a newer one is complete.

Concurrency comes from kernel file locks (``filelock``), which the OS releases when a holder
dies, so a crashed process never blocks a later one. Locks are taken per run, not per file, to
keep the per-experiment cost low:

- ``<root>/.leases/<id>.lock`` is held by each running graph (one per process and store root);
  its companion ``<id>.txt`` lists, one line each, the versions that run reads or writes. A
  version listed by a live lease is never pruned; a dead process's lease is ignored and removed.
- ``<experiment>/.lock`` is held while pruning, so pruners do not race each other.
- ``<experiment>/.run.lock`` serialises computing the experiment under ``resume``, so a second
  process waits for the first and then reuses its version instead of computing it again.

A reader and a pruner meet without a common lock in the style of Dekker's algorithm: the reader
first appends its lease line, then checks the version is neither gone nor marked ``.doomed``;
the pruner first marks the version ``.doomed``, then reads the leases, and either removes the
version or lifts the mark. Whatever the interleaving, either the pruner sees the lease or the
reader sees the mark (and looks for a newer version instead).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pickle
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
# Names the store gives files and folders next to experiments' and conditions' folders.
_STORE_NAME = re.compile(r"^(metadata\.json|results\.json|replicate_\d+)$")


def path_name_problem(name: str) -> str | None:
    """Why ``name`` (of an experiment or a condition) cannot be a folder of the store, or None.

    Checked when the name is given, so that a bad one fails before any unit runs, not when the
    run is published and its work would be lost.
    """
    if "\0" in name:
        return "contains a NUL character"
    if "/" in name or "\\" in name:
        return "contains a path separator ('/' or '\\')"
    if name.startswith("."):
        return "starts with '.', which the store keeps for its own hidden files"
    if _STORE_NAME.match(name):
        return "is the name of a file or folder the store writes itself"
    if len(name.encode()) > 200:
        return "is longer than a file name may be (200 bytes)"
    return None


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


#: Tags a value JSON cannot hold (a numpy scalar or array, a set, any object): its pickle.
_PICKLED = "__crystallize_pickle__"


def _encode(obj: Any) -> Any:
    # Pickled rather than turned into text, so that a resumed run returns the very same
    # metric values as the run that stored them, not their str().
    try:
        return {_PICKLED: base64.b64encode(pickle.dumps(obj)).decode("ascii")}
    except Exception:
        return str(obj)  # not picklable either: the best JSON can keep is its text


def _decode(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _PICKLED in obj:
        try:
            return pickle.loads(base64.b64decode(obj[_PICKLED]))
        except Exception:  # its class is gone (renamed, uninstalled): keep the tagged form
            return obj
    return obj


def write_json(path: Path, obj: Any, *, fsync: bool = False) -> None:
    # No indent: only then does json use its C encoder, several times faster on metadata.
    atomic_write(path, json.dumps(obj, default=_encode).encode(), fsync=fsync)


def read_json(path: Path) -> Any:
    """What :func:`write_json` wrote, with the values JSON cannot hold restored."""
    return json.loads(path.read_bytes(), object_hook=_decode)


def _held_by_someone(path: Path) -> bool:
    """True if some holder (another process, or this one through another handle) has the lock."""
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


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
    lease costs no lock round trip.
    """

    _open: dict[Path, list[LeaseBook]] = {}

    def __init__(self, root: Path) -> None:
        self.root = root
        folder = root / ".leases"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._lock = FileLock(folder / f"{stem}.lock")
        self._lock.acquire()
        self.path = folder / f"{stem}.txt"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.claims: set[str] = set()
        LeaseBook._open.setdefault(root, []).append(self)

    def claim(self, experiment: str, number: int) -> None:
        key = f"{experiment}/v{number}"
        if key not in self.claims:
            os.write(self._fd, f"{key}\n".encode())
            self.claims.add(key)

    def close(self) -> None:
        LeaseBook._open.get(self.root, []).remove(self)
        os.close(self._fd)
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._lock.release()

    @classmethod
    def live_claims(cls, root: Path) -> set[str]:
        """Every version claimed by a live run on ``root``, this process's included."""
        ours = cls._open.get(root, [])
        claims: set[str] = set().union(*(b.claims for b in ours)) if ours else set()
        own = {b.path for b in ours}
        folder = root / ".leases"
        for txt in folder.glob("*.txt") if folder.exists() else ():
            if txt in own:
                continue
            lock = txt.with_suffix(".lock")
            if _held_by_someone(lock):
                with contextlib.suppress(OSError):
                    claims.update(txt.read_text().split())
            else:  # left by a process that died
                for stale in (txt, lock):
                    with contextlib.suppress(OSError):
                        stale.unlink()
        return claims


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
            return read_json(cdir / RESULTS)
        except (OSError, ValueError):
            return None

    def missing_artifacts(self, results: dict[str, Any], replicates: int) -> list[str]:
        """Artifact files listed for the condition's first ``replicates`` that no longer exist."""
        missing = []
        for paths in results.get("artifacts", {}).values():
            for rel in paths[:replicates]:
                if rel is not None and not (self.path / rel).exists():
                    missing.append(rel)
        return missing


@dataclass
class VersionWriter:
    """A version being written by this process (claimed in its run's lease book)."""

    number: int
    path: Path
    fsync: bool
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
            # An empty marker cannot be partial, so it is created directly, not renamed in.
            os.close(os.open(cdir / MARKER, os.O_WRONLY | os.O_CREAT, 0o644))
            if self.fsync:
                fsync_dir(cdir)
        self.conditions.append(condition)

    def publish(self, metadata: dict[str, Any]) -> StoredVersion:
        """Write ``metadata.json`` last: from here on the version is used by resume and readers."""
        write_json(self.path / METADATA, metadata, fsync=self.fsync)
        return StoredVersion(self.number, self.path, metadata)


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
        lock = FileLock(self.dir / ".lock")
        try:
            lock.acquire()
        except PermissionError as exc:
            raise unusable_lock(self.dir / ".lock", exc) from None
        try:
            yield
        finally:
            lock.release()

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
            meta = read_json(path / METADATA)
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

    def allocate(self, book: LeaseBook) -> VersionWriter:
        """Claim a fresh ``vN``: higher than every existing version, never shared.

        ``mkdir`` is atomic, so two processes can never get the same number; the claim in
        ``book`` (made before anything is written) keeps pruners away while it is written.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        numbers = self.version_numbers()
        number = (numbers[0] + 1) if numbers else 0
        while True:
            book.claim(self.name, number)
            try:
                (self.dir / f"v{number}").mkdir()
                break
            except FileExistsError:
                number += 1
        return VersionWriter(number, self.dir / f"v{number}", self.fsync)

    def claim(self, book: LeaseBook, version: StoredVersion) -> bool:
        """Protect ``version`` from pruning for ``book``'s run; False if it is already going."""
        book.claim(self.name, version.number)
        return (version.path / METADATA).exists() and not (version.path / ".doomed").exists()

    def prune(self) -> list[Path]:
        """Retire versions beyond the newest ``keep`` complete ones, and dead unfinished ones.

        Versions claimed by a live run are skipped, and so are unfinished versions newer than
        the newest complete one (they may be being written). Retired versions are renamed away
        at once, so they vanish whole; the returned directories are for the caller to delete
        (slow on some disks, so it need not happen on the critical path).
        """
        numbers = self.version_numbers()
        if len(numbers) <= self.keep:
            return []
        versions = [(n, self.read(n)) for n in numbers]
        complete = [n for n, v in versions if v is not None and v.complete]
        if not complete:
            return []
        retire = set(complete[self.keep:]) | {
            n for n, v in versions if (v is None or not v.complete) and n < complete[0]
        }
        if not retire:
            return []
        trash: list[Path] = []
        with self._locked():
            doomed = []
            for number in sorted(retire):
                mark = self.dir / f"v{number}" / ".doomed"
                with contextlib.suppress(OSError):
                    os.close(os.open(mark, os.O_WRONLY | os.O_CREAT, 0o644))
                    doomed.append(number)
            claims = LeaseBook.live_claims(self.root)
            for number in doomed:
                path = self.dir / f"v{number}"
                if f"{self.name}/v{number}" in claims:
                    with contextlib.suppress(OSError):
                        (path / ".doomed").unlink()
                    continue
                target = self.dir / f".trash-v{number}-{uuid.uuid4().hex[:8]}"
                with contextlib.suppress(OSError):
                    os.rename(path, target)
                    trash.append(target)
        return trash
