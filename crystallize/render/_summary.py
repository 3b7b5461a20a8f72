"""How results are shown to people: metric summaries and hypothesis verdicts (CLI and UI)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from statistics import fmean, stdev
from typing import Any

from rich.table import Table
from rich.text import Text

from ..model import Result


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
