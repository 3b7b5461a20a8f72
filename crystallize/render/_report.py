"""``crystallize report``: pictures of the last run, drawn with matplotlib (an optional extra).

Two parts: a timeline of the last run's units, one lane per worker, coloured by experiment (where
the time went, and what waited on what), and each metric per condition of every experiment
(the replicates as points, mean and standard deviation as a bar). PNG, SVG, or a self-contained
HTML page holding the SVG and a table of the numbers, viewable offline.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CrystallizeError
from ..store import MetricSummary, StoredRun, last_run

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FORMATS = ("html", "svg", "png")
INSTALL_HINT = "reports need matplotlib: pip install 'crystallize[report]'"
_FAILED, _RETRIED = "#d62728", "//"


class ReportError(CrystallizeError, ValueError):
    """The report cannot be made as asked (unknown format, matplotlib missing, nothing run)."""


@dataclass(frozen=True)
class ReportData:
    """What a report shows, read from the store."""

    #: the versions the last run wrote (the timeline)
    timeline: list[StoredRun]
    #: per experiment, its newest version with results (the metrics)
    newest: dict[str, StoredRun]


def collect(runs: Mapping[str, list[StoredRun]]) -> ReportData:
    """The report's data from each experiment's stored runs (oldest first)."""
    newest = {}
    for name, versions in runs.items():
        with_results = [r for r in versions if r.conditions]
        if with_results:
            newest[name] = with_results[-1]
    return ReportData(last_run(r for versions in runs.values() for r in versions), newest)


def _format(path: Path) -> str:
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ReportError(
            f"cannot write a report as {path.suffix or 'a file without suffix'!r}; name the file "
            f"with one of: {', '.join('.' + f for f in FORMATS)} (e.g. report.html)"
        )
    return fmt


def write_report(runs: Mapping[str, list[StoredRun]], path: Path) -> ReportData:
    """Draw the report of the last run among ``runs`` (each experiment's stored runs, see
    :func:`~crystallize.store.stored_runs`) into ``path`` (``.html``, ``.svg`` or ``.png``).

    :raises ReportError: for an unknown suffix, a store with no run, or matplotlib missing
    """
    fmt = _format(path)
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError(INSTALL_HINT) from None
    data = collect(runs)
    if not data.newest:
        raise ReportError(
            "the store holds no run of these experiments yet; run them first "
            "(crystallize run PATH)"
        )
    figure = _draw(Figure, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png":
        figure.savefig(path, format="png", dpi=110)
    elif fmt == "svg":
        path.write_text(_svg(figure), encoding="utf-8")
    else:
        path.write_text(_html(data, _svg(figure)), encoding="utf-8")
    return data


def _svg(figure: Figure) -> str:
    import matplotlib

    out = io.StringIO()
    # Text stays text (searchable, selectable); matplotlib's default turns it into paths.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(out, format="svg")
    return out.getvalue()


def _metric_panels(data: ReportData) -> list[tuple[str, str]]:
    return [(name, metric) for name, run in data.newest.items() for metric in run.metric_names()]


def _draw(figure_class: type[Figure], data: ReportData) -> Figure:
    panels = _metric_panels(data)
    columns = min(3, max(1, len(panels)))
    rows = -(-len(panels) // columns)
    figure = figure_class(figsize=(4.2 * columns, 2.2 + 3.0 * rows + 0.5), layout="constrained")
    grid = figure.add_gridspec(rows + 1, columns, height_ratios=[2.2] + [3.0] * rows)
    _timeline(figure.add_subplot(grid[0, :]), data.timeline)
    for index, (name, metric) in enumerate(panels):
        _metric(figure.add_subplot(grid[1 + index // columns, index % columns]),
                data.newest[name], metric)
    return figure


def _timeline(ax: Axes, runs: list[StoredRun]) -> None:
    from matplotlib.patches import Patch

    units = sorted((u for run in runs for u in run.units()), key=lambda u: u["started"])
    ax.set_title("timeline of the last run: units per worker")
    if not units:
        ax.text(0.5, 0.5, "the last run executed no units (everything was resumed)",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    # From the start of the first experiment's run, so the time spent before units is visible.
    starts = [r.metadata.timings["started"] for r in runs if "started" in r.metadata.timings]
    start = min([units[0]["started"], *starts])
    lanes = list(dict.fromkeys(u["worker"] for u in units))
    experiments = list(dict.fromkeys(u["experiment"] for u in units))
    colours = {name: f"C{i % 10}" for i, name in enumerate(experiments)}
    end = max(u["finished"] for u in units) - start
    for unit in units:
        lane = lanes.index(unit["worker"])
        # Units far shorter than the run would vanish: each keeps a sliver of the width.
        width = max(unit["finished"] - unit["started"], end / 400)
        ax.barh(
            lane, width, left=unit["started"] - start, height=0.7,
            color=colours[unit["experiment"]], edgecolor=_FAILED if unit["failed"] else "none",
            linewidth=1.5, hatch=_RETRIED if unit["attempts"] > 1 else None,
        )
    ax.set_yticks(range(len(lanes)), [f"worker {i + 1}" for i in range(len(lanes))])
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.set_xlim(0, end * 1.02 or 1.0)
    ax.set_xlabel("seconds since the run started")
    handles = [Patch(color=colours[n], label=n) for n in experiments]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small",
              title="experiment")
    notes = []
    if any(u["failed"] for u in units):
        notes.append("red edge: failed")
    if any(u["attempts"] > 1 for u in units):
        notes.append("hatched: retried")
    if notes:
        ax.text(0.0, -0.35, "; ".join(notes), transform=ax.transAxes, fontsize="small")


def _metric(ax: Axes, run: StoredRun, metric: str) -> None:
    conditions = [c for c, record in run.conditions.items() if metric in record.metrics()]
    ax.set_title(f"{run.experiment} v{run.number}: {metric}", fontsize="medium")
    for x, condition in enumerate(conditions):
        values = run.values(condition, metric)
        if not values:
            continue
        # Replicates spread sideways a little so equal values stay visible as several points.
        offsets = [(i - (len(values) - 1) / 2) * 0.06 for i in range(len(values))]
        ax.scatter([x + o for o in offsets], values, s=18, color=f"C{x % 10}", alpha=0.75,
                   zorder=3)
        summary = MetricSummary(values)
        if summary.mean is not None:
            ax.errorbar(x + 0.25, summary.mean, yerr=summary.sd or 0.0, fmt="D", color="black",
                        capsize=4, markersize=5, zorder=4)
    ax.set_xticks(range(len(conditions)), conditions)
    ax.set_xlim(-0.6, len(conditions) - 0.4)
    ax.grid(axis="y", alpha=0.3)


def _html(data: ReportData, svg: str) -> str:
    rows = []
    for name, run in data.newest.items():
        for metric in run.metric_names():
            for condition in run.conditions:
                summary = MetricSummary(run.values(condition, metric))
                cells = (name, f"v{run.number}", condition, metric, str(len(summary.values)),
                         summary.describe())
                rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                            + "</tr>")
    units = sum(len(r.units()) for r in data.timeline)
    head = "".join(f"<th>{h}</th>" for h in
                   ("experiment", "version", "condition", "metric", "n", "mean ± sd"))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>crystallize report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}svg{{max-width:100%;height:auto}}
</style></head><body>
<h1>crystallize report</h1>
<p>The last run executed {units} unit(s) in {len(data.timeline)} experiment version(s).
Points are replicates; the black diamond and bar are the mean and standard deviation.</p>
{svg[svg.find("<svg"):]}
<h2>metrics</h2>
<table><tr>{head}</tr>
{chr(10).join(rows)}
</table></body></html>
"""
