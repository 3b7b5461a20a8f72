"""How results are shown to people: metric summaries and hypothesis verdicts (CLI and UI)."""

from __future__ import annotations

import numbers
import sys
from collections.abc import Mapping, Sequence
from statistics import fmean, stdev
from typing import Any

from rich.table import Table
from rich.text import Text

from ..errors import unit_traceback
from ..model import Result

#: ``--tb`` modes: ``None`` shows the first failed unit's traceback in full, the rest short.
TB_MODES = ("short", "long", "no")


def _numeric(values: Sequence[Any]) -> list[float] | None:
    found = [v for v in values if v is not None]
    if found and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in found):
        return [float(v) for v in found]
    return None


def format_values(values: Sequence[Any]) -> str:
    """Replicate values as ``mean ± sd`` (numbers) or the distinct values (anything else)."""
    numeric = _numeric(values)
    if numeric is None:
        shown = list(dict.fromkeys(repr(v) for v in values if v is not None))
        text = ", ".join(shown) or "-"
        return text if len(text) <= 30 else text[:29] + "…"
    mean = fmean(numeric)
    if len(numeric) < 2:
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {stdev(numeric):.2g}"


def summary_title(result: Result) -> Text:
    """``name (executed -> vN, R replicate(s))``, or resumed, or failed."""
    how = f"resumed v{result.version}" if result.resumed else f"executed -> v{result.version}"
    if result.failed:
        how = "failed"
    return Text(f"{result.experiment} ({how}, {result.replicates} replicate(s))", style="bold")


def summary_table(result: Result) -> Table:
    """Metrics of one experiment: a row per condition, ``mean ± sd`` over replicates."""
    table = Table()
    table.add_column("condition")
    per_condition = {c: result.metrics.condition(c).metrics for c in result.conditions}
    metric_names = list(dict.fromkeys(m for ms in per_condition.values() for m in ms))
    for metric in metric_names:
        table.add_column(metric, justify="right")
    if result.errors:
        table.add_column("errors", style="red")
    for condition, metrics in per_condition.items():
        row = [condition] + [format_values(metrics.get(m, [])) for m in metric_names]
        if result.errors:
            failed = [k for k in result.errors if k.startswith(f"{condition}_rep_")]
            row.append(f"{len(failed)} unit(s)" if failed else "")
        table.add_row(*row)
    return table


def hypothesis_lines(result: Result) -> list[str]:
    """One line per hypothesis: each treatment's verdict, then the ranking."""
    lines = []
    for hyp in result.metrics.hypotheses:
        parts = []
        for treatment, output in hyp.results.items():
            shown = {k: v for k, v in output.items() if k in ("p_value", "significant", "error")}
            text = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in (shown or output).items()
            )
            parts.append(f"{treatment}: {text}")
        ranking = ", ".join(hyp.ranking) or "-"
        lines.append(f"hypothesis {hyp.name}: {'; '.join(parts) or 'no treatments'} "
                     f"(ranking: {ranking})")
    return lines


def worker_traceback(error: BaseException) -> str:
    """The traceback a unit's error carries from the worker that raised it, in full."""
    text = unit_traceback(error)
    if sys.version_info < (3, 11):  # format_exception shows exception notes from 3.11 on
        notes = [n for n in getattr(error, "__notes__", ()) if n not in text]
        text += "".join(f"{n}\n" for n in notes)
    return text.rstrip("\n")


def failure_lines(results: Mapping[str, Result], tb: str | None = None) -> list[str]:
    """The failed units of ``results``, one line each, with worker tracebacks as ``tb`` asks.

    ``long``: every traceback in full; ``short``: none; ``no``: not even the error message;
    ``None``: the first in full and the rest short, as most failures share one cause.
    """
    lines: list[str] = []
    first = True
    for name, result in results.items():
        for key, error in result.errors.items():
            condition, _, replicate = key.rpartition("_rep_")
            where = f"{name} [{condition} rep {replicate}]"
            if tb == "no":
                lines.append(f"{where} failed")
                continue
            lines.append(f"{where}: {type(error).__name__}: {error}")
            if tb == "long" or (tb is None and first):
                lines += [f"    {line}" for line in worker_traceback(error).splitlines()]
            first = False
    return lines
