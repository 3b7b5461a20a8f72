"""The README's Python examples run as written and give the values their comments promise."""

from __future__ import annotations

import re
from pathlib import Path

import crystallize

README = Path(crystallize.__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run_and_say_what_they_show() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 2
    namespace: dict[str, object] = {"__name__": "readme"}
    for block in blocks:  # in order: later examples build on earlier ones, as a reader would
        exec(compile(block, str(README), "exec"), namespace)
    result = namespace["result"]
    assert result.metrics.baseline.metrics["total"] == [10, 10, 10]
    assert result.metrics.treatments["double"].metrics["total"] == [20, 20, 20]
    consumer = namespace["results"]["consumer"].metrics.baseline.metrics
    assert consumer["read_replicate"] == [0, 1, 0, 1, 0, 1]
    assert consumer["upstream_total"] == [10] * 6
