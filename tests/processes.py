"""Helpers for tests that watch real processes."""

from __future__ import annotations


def is_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, finished but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped while we looked
        return False
