"""What the fingerprints learnt about the project's source files, kept in each store root so
that a run in a fresh process parses no file that is unchanged since an earlier run."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..fingerprint import known_code, load_known_code
from ._store import atomic_write

#: A JSON file in the store root; a cache: deleting it only costs the next run a parse.
KNOWN_CODE = ".crystallize_code.json"


def recall_code(root: Path) -> None:
    """Let this process reuse the code facts kept in ``root`` (JSON: nothing is executed)."""
    try:
        document = json.loads((root / KNOWN_CODE).read_bytes())
    except (OSError, ValueError):  # never written, unreadable or torn by hand: recomputed
        return
    load_known_code(document)


def keep_code(roots: Iterable[Path]) -> None:
    """Write the code facts of this process into each existing root, if any were computed."""
    # os.path, not Path.is_dir: called on the way out of a run, it must not raise over its error
    roots = [root for root in roots if os.path.isdir(root)]
    if known_code(only_if_added=True) is None:  # a resume that learnt nothing writes nothing
        return
    for root in roots:
        recall_code(root)  # what another process added meanwhile is kept too
    document = known_code(only_if_added=False)
    payload = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    for root in roots:
        with contextlib.suppress(OSError):  # a read-only store still runs, a little slower
            atomic_write(root / KNOWN_CODE, payload)
