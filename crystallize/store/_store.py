"""The versioned on-disk store: ``<root>/<experiment>/vN/``.

Layout of one version, every file directly in ``vN/`` (creating a file or a folder is what a
small unit's bookkeeping costs most on real disks, so there are as few as crash consistency
allows)::

    vN/metadata.json                   # every condition's units: metrics, files, reads...
    vN/.crystallize_complete           # last: the hash of metadata.json (none when failed)
    vN/<condition>~r<r>~<step>~<name>  # artifacts, written by the units (see ``_names``)
    vN/<condition>~r<r>~<n>.npy|pkl    # metric values JSON cannot hold (read only when needed)
    vN/units.jsonl                     # journal of the units finished while it is written
    vN/.doomed                         # briefly, while a pruner decides

The records themselves (and why reading them runs no code) are in ``_records``.

Crash consistency comes from ordering and atomic renames: every file is written to a temporary
name and renamed into place, ``metadata.json`` only after every file it lists, and the marker
only after ``metadata.json``. The marker holds ``metadata.json``'s hash, and ``metadata.json``
the size and hash of each artifact, so a truncated or edited file is seen, and a torn marker
vouches for nothing. A version is used only with its marker (a failed one has none and is never
used); older versions are pruned only after a newer one is complete. A version stored by an
older layout is never used either, but it is kept and pruned by the status it recorded.

While a version is written, each unit that finishes is appended to its journal (one line in one
``write``, after the unit's artifacts and value files are in place), so a run that is
interrupted keeps what it finished: a later resume reuses those units. The first line says
which run it was (fingerprint, treatments); a torn or garbled line is skipped. Once the marker
is written the journal says nothing ``metadata.json`` does not, and it is removed.

Concurrency comes from kernel file locks (``filelock``), which the OS releases when a holder
dies, so a crashed process never blocks a later one. Locks are taken per run, not per file, to
keep the per-experiment cost low:

- ``<root>/.leases/<id>.lock`` is held by each running graph (one per process and store root);
  its companion ``<id>.txt`` lists, one line each, the versions that run reads or writes. A
  version listed by a live lease is never pruned; a dead process's lease is ignored and removed.
- ``<experiment>/.lock`` is held while pruning, so pruners do not race each other.
- ``<experiment>/.run.lock`` serialises computing the experiment under ``resume``, so a second
  process waits for the first and then reuses its version instead of computing it again;
  ``.run.owner`` says who holds it.

A reader and a pruner meet without a common lock in the style of Dekker's algorithm: the reader
first appends its lease line, then checks the version is neither gone nor marked ``.doomed``;
the pruner first marks the version ``.doomed``, then reads the leases, and either removes the
version or lifts the mark. Whatever the interleaving, either the pruner sees the lease or the
reader sees the mark (and looks for a newer version instead).

Pruning and cleaning never delete through a symbolic link inside the store: a linked experiment
folder, version or ``.leases`` folder is skipped, and reported.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..errors import CorruptRecordError, InvalidNameError, OlderLayoutError, StoreError
from ._journal import JOURNAL, journal_line
from ._leases import LeaseBook, held_by_someone, unusable_lock
from ._metadata import SCHEMA_VERSION, VersionMetadata, VersionStatus
from ._records import ConditionRecord, Encoder, UnitRecord, content_hash, modified_ns

METADATA = "metadata.json"
MARKER = ".crystallize_complete"
DOOMED = ".doomed"
_VERSION = re.compile(r"^v(\d+)$")
# Names the store writes itself, in this layout or older ones (whose versions it still reads),
# which an experiment or a condition may not take.
_STORE_NAME = re.compile(r"^(metadata\.json|results\.json|replicate_\d+)$")


def path_name_problem(name: str, *, beside_store_files: bool = True) -> str | None:
    """Why ``name`` (of an experiment or a condition) cannot be part of a path of the store,
    or None.

    Checked when the name is given, so that a bad one fails before any unit runs, not when the
    run is published and its work would be lost. Step and artifact names only ever appear
    inside a unit's file name: ``beside_store_files=False`` allows the store's names.
    """
    if "\0" in name:
        return "contains a NUL character"
    if "/" in name or "\\" in name:
        return "contains a path separator ('/' or '\\')"
    if name.startswith("."):
        return "starts with '.', which the store keeps for its own hidden files"
    if beside_store_files and _STORE_NAME.match(name):
        return "is the name of a file or folder the store writes itself"
    if len(name.encode()) > 200:
        return "is longer than a file name may be (200 bytes)"
    return None


def check_name(kind: str, name: Any, where: str) -> str:
    """``name`` (of a step or an artifact, which become part of each unit's artifact file
    name) if it is safe as one, else :class:`InvalidNameError` saying why.

    A separator or ``..`` in it would write outside ``data/``.
    """
    problem = ("must be a non-empty string" if not isinstance(name, str) or not name.strip()
               else path_name_problem(name, beside_store_files=False))
    if problem is not None:
        raise InvalidNameError(f"{where}: {kind} name {name!r} {problem}; it becomes part "
                               "of a file name in the store. Rename it")
    return name


@functools.cache
def host_name() -> str:
    """This machine's name, as runs record it (asked once per process: a run records it for
    every unit, and on a busy machine each ``uname`` costs as much as creating a file)."""
    return socket.gethostname()


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


def delete_tree(path: Path) -> None:
    """Delete a directory tree (never following links in it); gone already is fine.

    Another process may be deleting the same leftover: what it removed first is not an error.
    """
    for _ in range(3):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            if not os.path.lexists(path):
                return


@dataclass(frozen=True)
class StoredVersion:
    """A version read from disk: its number, directory and ``metadata.json``."""

    number: int
    path: Path
    metadata: VersionMetadata

    @property
    def complete(self) -> bool:
        return self.metadata.complete

    def condition_record(self, condition: str) -> ConditionRecord:
        """The units of ``condition`` as ``metadata.json`` records them."""
        return self.metadata.conditions[condition].record

    def recorded_ns(self) -> int | None:
        """When ``metadata.json`` was written (None if it is gone): see FileRecord.problem."""
        return modified_ns(self.path / METADATA)


@dataclass
class VersionWriter:
    """A version being written by this process (claimed in its run's lease book)."""

    number: int
    path: Path
    fsync: bool

    journaled: bool = False
    #: value files written for the journal, by path: their hash (not written twice)
    written: dict[str, str] = field(default_factory=dict)

    def reuse(self, source: Path, unit: UnitRecord) -> None:
        """Bring a unit's artifacts over from the version at ``source`` without recomputing it.

        Artifacts are hard-linked (copied where links are impossible), so the source version can
        later be pruned without affecting this one.
        """
        for art in unit.artifacts.values():
            dst = self.path / art.path
            try:
                os.link(source / art.path, dst)
            except FileExistsError:
                pass
            except OSError:
                shutil.copy2(source / art.path, dst)

    def _write_values(self, side: list[tuple[str, bytes]]) -> None:
        for rel, payload in side:
            digest = content_hash(payload)
            if self.written.get(rel) != digest:
                atomic_write(self.path / rel, payload, fsync=self.fsync)
                self.written[rel] = digest

    def journal(self, header: dict[str, Any],
                units: Sequence[tuple[str, UnitRecord, Sequence[str]]]) -> None:
        """Append finished units, as (condition, unit, its warnings), to the journal in one
        write (the journal is created with ``header`` on first use)."""
        side: list[tuple[str, bytes]] = []
        lines = [journal_line(condition, unit, said, Encoder(condition, unit.replicate, side))
                 for condition, unit, said in units]
        self._write_values(side)
        flags = os.O_WRONLY | os.O_APPEND
        if not self.journaled:
            first = {**header, "schema_version": SCHEMA_VERSION}
            lines.insert(0, json.dumps(first).encode() + b"\n")
            flags |= os.O_CREAT
        fd = os.open(self.path / JOURNAL, flags, 0o644)
        try:
            view = memoryview(b"".join(lines))
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if self.fsync and not self.journaled:
            fsync_dir(self.path)
        self.journaled = True

    def publish(self, metadata: VersionMetadata) -> StoredVersion:
        """Write the value files, ``metadata.json``, then the marker: from then on the version
        is used by resume and readers (a failed one gets no marker and never is)."""
        data, side = metadata.to_json()
        self._write_values(side)
        atomic_write(self.path / METADATA, data, fsync=self.fsync)
        if metadata.status != "failed":
            # Not renamed in: a torn marker does not match the hash, so it vouches for nothing.
            fd = os.open(self.path / MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, content_hash(data).encode())
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self.fsync:
                fsync_dir(self.path)
            if self.journaled:
                with contextlib.suppress(OSError):
                    os.unlink(self.path / JOURNAL)
        return StoredVersion(self.number, self.path, metadata)


@dataclass(frozen=True)
class Scan:
    """The version resume would start from, and why newer ones were passed over."""

    version: StoredVersion | None
    notes: tuple[str, ...] = ()


@dataclass
class Removal:
    """What pruning or cleaning removed (``vN`` names) and what it left alone, and why."""

    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: versions left because a running process reads or writes them
    in_use: list[str] = field(default_factory=list)
    #: renamed-away directories still to delete (see :meth:`ExperimentStore.prune`)
    trash: list[Path] = field(default_factory=list)


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

    def mark_owner(self, experiment: str) -> None:
        """Say who holds the run lock, for a process waiting on it (see :meth:`owner`)."""
        info = {"pid": os.getpid(), "host": host_name(), "experiment": experiment,
                "since": time.time()}
        atomic_write(self.dir / ".run.owner", json.dumps(info).encode())

    def owner(self) -> str:
        """Who holds the run lock, as :meth:`mark_owner` left it."""
        try:
            info = json.loads((self.dir / ".run.owner").read_bytes())
            since = time.strftime("%H:%M:%S", time.localtime(float(info["since"])))
            return (f"pid {int(info['pid'])} on {info['host']} (experiment "
                    f"{info['experiment']}, since {since})")
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def version_numbers(self) -> list[int]:
        """Every version directory's number, newest first."""
        try:
            names = os.listdir(self.dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        numbers = [int(m.group(1)) for n in names if (m := _VERSION.match(n))]
        return sorted(numbers, reverse=True)

    def read(self, number: int) -> StoredVersion | None:
        """Version ``number``; None while it has no ``metadata.json`` (being written, or
        abandoned); :class:`CorruptRecordError` if its metadata is not what a run writes or
        its marker does not vouch for it (:class:`OlderLayoutError` for an older layout)."""
        path = self.dir / f"v{number}"
        metadata_path = path / METADATA
        try:
            data = metadata_path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise CorruptRecordError(f"{metadata_path}: cannot be read ({exc})",
                                     path=metadata_path) from None
        metadata = VersionMetadata.from_json(metadata_path, data)
        if metadata.status != "failed":
            try:
                with open(os.path.join(path, MARKER), "rb") as marker:
                    seal = marker.read()
            except OSError:
                raise CorruptRecordError(
                    f"{path / MARKER}: completion marker missing (the run stopped while "
                    "publishing, or it was removed); not trusted", path=path / MARKER) from None
            if seal.decode(errors="replace") != content_hash(data):
                raise CorruptRecordError(
                    f"{metadata_path}: changed since the run wrote it (it does not match the "
                    f"hash in {MARKER}); not trusted", path=metadata_path)
        return StoredVersion(number, path, metadata)

    def _status(self, number: int) -> VersionStatus | None:
        """The status version ``number`` recorded, also under an older layout; None while it
        has none (being written, abandoned) or cannot be trusted."""
        try:
            version = self.read(number)
        except OlderLayoutError as exc:
            return exc.status  # type: ignore[return-value]
        except CorruptRecordError:
            return None
        return None if version is None else version.metadata.status

    def _read_quietly(self, number: int) -> StoredVersion | None:
        try:
            return self.read(number)
        except CorruptRecordError:
            return None

    def scan(self) -> Scan:
        """The newest version a resume can start from: complete, or partial (some units
        failed: resume reruns them). Failed and unfinished versions are passed over; corrupt
        ones too, each with a note saying why."""
        notes: list[str] = []
        for number in self.version_numbers():
            try:
                version = self.read(number)
            except CorruptRecordError as exc:
                notes.append(f"v{number} is not usable ({exc})")
                continue
            if version is not None and version.metadata.status != "failed":
                return Scan(version, tuple(notes))
        return Scan(None, tuple(notes))

    def newer_than(self, number: int | None) -> list[int]:
        """Versions newer than ``number`` (all when None), newest first. Newer than the version
        :meth:`scan` starts from, they were never published (interrupted, or still running),
        failed, or are unreadable; their journals may still hold finished units."""
        return [n for n in self.version_numbers() if number is None or n > number]

    def claim_unfinished(self, book: LeaseBook, number: int) -> bool:
        """:meth:`claim` for a version resume does not start from (see :meth:`newer_than`)."""
        book.claim(self.name, number)
        path = self.dir / f"v{number}"
        if (path / DOOMED).exists() and held_by_someone(self.dir / ".lock"):
            return False
        return path.is_dir()

    def newest_complete(self) -> StoredVersion | None:
        """The newest version whose ``metadata.json`` says complete, or None."""
        for number in self.version_numbers():
            version = self._read_quietly(number)
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
        """Protect ``version`` from pruning for ``book``'s run; False if it is already going.

        A ``.doomed`` mark counts only while a pruner holds the experiment's lock: one left by
        a pruner that died means nothing (``status`` ignores it too, so the two agree).
        """
        book.claim(self.name, version.number)
        if os.path.exists(os.path.join(version.path, DOOMED)) and held_by_someone(
                self.dir / ".lock"):
            return False
        return os.path.exists(os.path.join(version.path, METADATA))

    def _link_note(self, path: Path) -> str:
        return (f"skipped {path}: a symbolic link (crystallize never deletes through a link; "
                "remove it yourself if it is not wanted)")

    def _retire(self, numbers: list[int], removal: Removal) -> None:
        """Rename the versions away, except those a live run claims (see the module doc)."""
        with self._locked():
            doomed = []
            for number in sorted(numbers):
                path = self.dir / f"v{number}"
                if path.is_symlink():
                    removal.skipped.append(self._link_note(path))
                    continue
                with contextlib.suppress(OSError):
                    os.close(os.open(path / DOOMED, os.O_WRONLY | os.O_CREAT, 0o644))
                    doomed.append(number)
            claims = LeaseBook.live_claims(self.root)
            for number in doomed:
                path = self.dir / f"v{number}"
                if f"{self.name}/v{number}" in claims:
                    with contextlib.suppress(OSError):
                        (path / DOOMED).unlink()
                    removal.in_use.append(f"v{number}")
                    continue
                target = self.dir / f".trash-v{number}-{uuid.uuid4().hex[:8]}"
                with contextlib.suppress(OSError):
                    os.rename(path, target)
                    removal.trash.append(target)
                    removal.removed.append(f"v{number}")

    def prune(self) -> Removal:
        """Retire versions beyond the newest ``keep`` complete ones, and superseded others.

        A version that is not complete (partial, failed, unfinished, unreadable) goes once a
        newer version is published; a complete one only once ``keep`` newer complete ones
        exist. Versions claimed by a live run are skipped. Retired versions are renamed away at
        once, so they vanish whole; ``trash`` is for the caller to delete (slow on some disks,
        so it need not happen on the critical path).
        """
        removal = Removal()
        if self.dir.is_symlink():
            removal.skipped.append(self._link_note(self.dir))
            return removal
        numbers = self.version_numbers()
        if len(numbers) <= self.keep:
            return removal
        states = [(n, self._status(n)) for n in numbers]
        complete = [n for n, s in states if s == "complete"]
        published = [n for n, s in states if s is not None]
        if not published:
            return removal
        retire = set(complete[self.keep:]) | {
            n for n, s in states if s != "complete" and n < published[0]
        }
        if retire:
            self._retire(sorted(retire), removal)
        return removal

    def clean(self, keep: int | None) -> Removal:
        """Delete, now: complete versions beyond the newest ``keep`` (all when None), every
        version that is not complete, and what interrupted pruning left behind.

        What a live run claims is left alone and reported, as is any symbolic link.
        """
        removal = Removal()
        if self.dir.is_symlink():
            removal.skipped.append(self._link_note(self.dir))
            return removal
        if not self.dir.is_dir():
            return removal
        try:
            numbers = self.version_numbers()
            complete = [n for n in numbers if self._status(n) == "complete"]
            kept = complete[:keep] if keep is not None else []
            self._retire([n for n in numbers if n not in kept], removal)
            for entry in sorted(self.dir.iterdir()):
                if not entry.name.startswith(".trash-") or entry in removal.trash:
                    continue
                if entry.is_symlink():
                    removal.skipped.append(self._link_note(entry))
                else:
                    removal.trash.append(entry)
                    removal.removed.append(entry.name)
            for path in removal.trash:
                delete_tree(path)
        except OSError as exc:
            raise StoreError(f"cannot clean {self.dir}: {exc.strerror or exc}") from None
        removal.trash.clear()
        return removal
