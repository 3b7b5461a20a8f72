"""Medians, ratios and the Markdown/JSON report."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.systems import System
from bench.workloads import Workload


@dataclass
class Row:
    workload: str
    system: str
    n: int = 0
    wall_median_s: float | None = None
    wall_min_s: float | None = None
    wall_max_s: float | None = None
    cpu_s: float | None = None  # CPU work done in the timed run (0 for a pure resume)
    ideal_s: float | None = None
    wall_over_ideal: float | None = None
    overhead_ms: float | None = None  # per unit or per node, see Workload.per
    vs_best_other: float | None = None
    best_other: str | None = None
    startup_s: float | None = None
    import_s: float | None = None
    framework: str | None = None
    skipped: str | None = None
    unavailable: str | None = None  # the system could not even be imported
    errors: list[str] = field(default_factory=list)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(
    measurements: list[dict[str, Any]],
    workloads: list[Workload],
    systems: list[System],
    cores: int,
    skipped: dict[str, str],
    failed: dict[str, str],
) -> list[Row]:
    rows: list[Row] = []
    for w in workloads:
        by_system: dict[str, Row] = {}
        for s in systems:
            row = Row(w.key, s.name)
            reason = skipped.get(s.name) or s.skip_reason(w)
            if s.name in failed:
                row.unavailable = failed[s.name]
            elif reason:
                row.skipped = reason
            ms = [m for m in measurements if m["system"] == s.name and m["workload"] == w.key]
            row.errors += sorted({m["error"] for m in ms if "error" in m})
            ok = [m for m in ms if "error" not in m]
            if ok:
                _fill(row, ok, w, s, cores)
            rows.append(row)
            by_system[s.name] = row
        _compare(by_system, systems)
    return rows


def _fill(row: Row, ok: list[dict[str, Any]], w: Workload, s: System, cores: int) -> None:
    walls = [m["wall_s"] for m in ok]
    row.n = len(ok)
    row.wall_median_s = _median(walls)
    row.wall_min_s, row.wall_max_s = min(walls), max(walls)
    # A resumed run reports the stored metrics of the run it loaded, not work it did.
    cpu = 0.0 if w.resume else (_median([m["cpu_s"] for m in ok]) or 0.0)
    row.cpu_s = cpu
    critical = 0.0 if w.resume else w.critical_path_s()
    row.ideal_s = max(cpu / cores, critical)
    assert row.wall_median_s is not None
    # For trivial steps or a resume the ideal is ~0 and the ratio would be noise.
    if row.ideal_s > 0 and (w.unit_ms or w.sleep_s) and not w.resume:
        row.wall_over_ideal = row.wall_median_s / row.ideal_s
    floor = max(cpu / s.usable_cores(cores), critical)
    row.overhead_ms = (row.wall_median_s - floor) / w.per_count * 1000
    row.startup_s = _median([m["startup_s"] for m in ok if "startup_s" in m])
    row.import_s = _median([m["import_s"] for m in ok if "import_s" in m])
    row.framework = next((m["framework"] for m in ok if "framework" in m), None)


def _compare(by_system: dict[str, Row], systems: list[System]) -> None:
    others = [
        by_system[s.name] for s in systems
        if not s.crystallize and by_system[s.name].wall_median_s is not None
    ]
    if not others:
        return
    best = min(others, key=lambda r: r.wall_median_s or 0.0)
    for s in systems:
        row = by_system[s.name]
        if s.crystallize and row.wall_median_s is not None and best.wall_median_s:
            row.vs_best_other = row.wall_median_s / best.wall_median_s
            row.best_other = best.system


# --------------------------------------------------------------------------- Markdown


def _f(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _headline(row: Row, w: Workload) -> str:
    if row.unavailable:
        return "unavailable"
    if row.errors and row.wall_median_s is None:
        return "error"
    if row.skipped:
        return "—"
    if w.headline == "ms":
        return _f(row.overhead_ms, ".2f")
    return _f(row.wall_over_ideal, ".2f")


def _headline_label(w: Workload) -> str:
    if w.headline == "ms":
        return f"{w.key} ms/{w.per}"
    return f"{w.key} wall ÷ {'one sleep' if w.sleep_s else 'ideal'}"


def markdown(
    rows: list[Row], workloads: list[Workload], systems: list[System], meta: dict[str, Any]
) -> str:
    cell = {(r.workload, r.system): r for r in rows}
    names = [s.name for s in systems]
    out = [
        f"## Benchmark — {meta['timestamp']}",
        "",
        f"`{meta['command']}` — {meta['cores']} cores, {meta['rounds']} round(s), "
        f"medians; data on {meta['data_dir']}; Python {meta['python']}"
        + (f"; Dask systems on {meta['dask_cluster']} cluster" if any(s.cluster for s in systems)
           else "") + ".",
        "",
        "### Summary (headline figure per workload; lower is better)",
        "",
        "| workload | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for w in workloads:
        out.append(
            f"| {_headline_label(w)} | "
            + " | ".join(_headline(cell[(w.key, n)], w) for n in names) + " |"
        )
    out += [
        "",
        "### Detail",
        "",
        "| workload | system | n | wall s, median (min–max) | CPU s | ideal s | wall ÷ ideal "
        "| overhead ms/unit | vs best other |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for w in workloads:
        for n in names:
            r = cell[(w.key, n)]
            if r.skipped or r.unavailable:
                continue
            if r.wall_median_s is None:
                wall = "error"
            else:
                wall = (f"{r.wall_median_s:.3f} ({_f(r.wall_min_s, '.3f')}–"
                        f"{_f(r.wall_max_s, '.3f')})")
            vs = "—" if r.vs_best_other is None else f"{r.vs_best_other:.2f} × {r.best_other}"
            out.append(
                f"| {w.key} | {n} | {r.n} | {wall} | {_f(r.cpu_s, '.3f')} | "
                f"{_f(r.ideal_s, '.3f')} | {_f(r.wall_over_ideal, '.2f')} | "
                f"{_f(r.overhead_ms, '.2f')} /{w.per} | {vs} |"
            )
            notes += [f"{w.key} {n}: {e}" for e in r.errors]
    by_reason: dict[str, set[str]] = {}
    for r in rows:
        if r.skipped:
            by_reason.setdefault(r.skipped, set()).add(r.system)
    skips = [f"{why} ({', '.join(sorted(who))})" for why, who in sorted(by_reason.items())]
    out += ["", "Workloads: " + "; ".join(f"{w.key} = {w.title}" for w in workloads) + "."]
    out += ["", "Per process, outside the timed run (median over all its measurements): "
            + "; ".join(_side_costs(rows, names)) + "."]
    frameworks = sorted({f"{r.system}: {r.framework}" for r in rows if r.framework})
    if frameworks:
        out += ["", "Imported: " + "; ".join(frameworks) + "."]
    if skips:
        out += ["", "Not run (—): " + "; ".join(skips) + "."]
    gone = sorted({f"{r.system}: {r.unavailable}" for r in rows if r.unavailable})
    if gone:
        out += ["", "Unavailable (import failed): " + "; ".join(gone) + "."]
    if notes:
        out += ["", "Notes:", *(f"- {x}" for x in notes)]
    return "\n".join(out) + "\n"


def _side_costs(rows: list[Row], names: list[str]) -> list[str]:
    out = []
    for n in names:
        imports = [r.import_s for r in rows if r.system == n and r.import_s is not None]
        startups = [r.startup_s for r in rows if r.system == n and r.startup_s is not None]
        if not imports:
            continue
        text = f"{n} import {statistics.median(imports):.2f} s"
        if startups:
            text += f", cluster startup {statistics.median(startups):.2f} s"
        out.append(text)
    return out


def write_json(
    path: Path,
    meta: dict[str, Any],
    workloads: list[Workload],
    systems: list[System],
    rows: list[Row],
    measurements: list[dict[str, Any]],
) -> None:
    payload = {
        "meta": meta,
        "workloads": {
            w.key: {"title": w.title, "nodes": len(w.nodes), "units": w.units,
                    "unit_ms": w.unit_ms, "iters": w.iters, "sleep_s": w.sleep_s,
                    "critical_path_s": w.critical_path_s(), "per": w.per}
            for w in workloads
        },
        "systems": {s.name: {"variant": s.variant, "note": s.note} for s in systems},
        "rows": [asdict(r) for r in rows],
        "measurements": measurements,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
