"""Run a command in a real pseudo-terminal, as a user's terminal would (for CLI and UI tests)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Sequence
from pathlib import Path


def run_in_terminal(
    argv: list[str], *, cwd: Path, env: dict[str, str], size: tuple[int, int] = (40, 120),
    script: Sequence[tuple[bytes, bytes]] = (), timeout: float = 120,
) -> tuple[int, str]:
    """Run ``argv`` on a pty of ``size`` (rows, columns) until it exits; (exit code, output).

    ``script`` is what a user would do: for each ``(expected, keys)`` in turn, wait until
    ``expected`` has been printed (since the previous keys were typed), then type ``keys``.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    seen = b""
    steps, since = list(script), 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the program closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if steps and steps[0][0] in seen[since:]:
                since = len(seen)
                os.write(master, steps.pop(0)[1])
    finally:
        os.close(master)
        if proc.poll() is None:  # still running at the deadline, or the script stalled
            proc.kill()
        proc.wait()
    return proc.returncode, seen.decode(errors="replace")
