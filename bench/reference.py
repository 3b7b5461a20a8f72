"""The crystallize-ml 0.27.0 reference interpreter: a cached venv created on request.

crystallize-ml is imported as `crystallize`, like this project, so it can only run in an
interpreter of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PACKAGE = "crystallize-ml"
VERSION = "0.27.0"
# anyio only so that the W6 step body is the very same function as everywhere else.
REQUIREMENTS = (f"{PACKAGE}=={VERSION}", "anyio")


def _python(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / "python"


def _installed_version(python: Path) -> str | None:
    probe = "import importlib.metadata as m; print(m.version('crystallize-ml'))"
    try:
        out = subprocess.run(
            [str(python), "-c", probe], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def ensure(venv: Path, log: bool = True) -> tuple[Path | None, str]:
    """Return (python, "") when the reference is usable, else (None, why it is not)."""
    python = _python(venv)
    if python.exists() and _installed_version(python) == VERSION:
        return python, ""
    if log:
        print(f"bench: creating the {PACKAGE} {VERSION} reference venv", file=sys.stderr)
    try:
        if not python.exists():
            made = subprocess.run(
                [sys.executable, "-m", "venv", str(venv)],
                capture_output=True, text=True, timeout=300,
            )
            if made.returncode != 0:
                return None, f"venv creation failed: {_tail(made.stderr)}"
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             *REQUIREMENTS],
            capture_output=True, text=True, timeout=900,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"cannot install {PACKAGE}=={VERSION}: {exc}"
    if pip.returncode != 0:
        return None, f"pip install {PACKAGE}=={VERSION} failed: {_tail(pip.stderr)}"
    if _installed_version(python) != VERSION:
        return None, f"{PACKAGE} {VERSION} not importable after install"
    return python, ""
