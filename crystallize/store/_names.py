"""The names of the files a version keeps for its units, all directly in ``vN/``.

A unit's artifact is ``<condition>~r<replicate>~<step>~<name>`` and a metric value JSON cannot
hold is ``<condition>~r<replicate>~<n>.npy|pkl``: no folder per replicate, condition or step,
since creating one costs as much as writing a small file on most disks. Each part is escaped
(``%`` as ``%25``, ``~`` as ``%7E``), so the parts never run into each other and four parts
(an artifact) never look like three (a value). The store's own files (``metadata.json``,
``units.jsonl``, hidden files) have no ``~``. A name too long for a file name becomes ``~``, the
hash of its parts and the artifact's extension: no escaped part is empty, so no other name
starts with ``~``.
"""

from __future__ import annotations

import hashlib
import os

#: Longest file name the store writes (most file systems allow 255 bytes).
_LONGEST = 240


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("~", "%7E")


def _flat(*parts: str) -> str:
    name = "~".join(_escape(p) for p in parts)
    if len(name.encode()) <= _LONGEST:
        return name
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()
    extension = os.path.splitext(parts[-1])[1]
    return f"~{digest}{extension if len(extension.encode()) <= 32 else ''}"


def artifact_file(condition: str, replicate: int | str, step: str, name: str) -> str:
    """The file (in ``vN/``) of artifact ``name`` written by ``step`` of a unit.

    ``replicate`` may be ``*`` (and ``step`` too) to show where a family of files would be.
    """
    return _flat(condition, f"r{replicate}", step, name)


def value_file(condition: str, replicate: int, index: int, extension: str) -> str:
    """The file (in ``vN/``) of the ``index``-th value of a unit that JSON cannot hold."""
    return _flat(condition, f"r{replicate}", f"{index}.{extension}")
