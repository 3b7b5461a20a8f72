"""Writers and loaders of the producer's outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def dump_json(obj: Any) -> str:
    """Encode ``obj`` as the text of a JSON file."""
    return json.dumps(obj, indent=2, sort_keys=True)


def load_json(path: Path) -> Any:
    """Decode a JSON file written by :func:`dump_json`."""
    return json.loads(path.read_text(encoding="utf-8"))
