"""The ``crystallize`` command line (SPEC §6).

``PATH`` is a ``config.yaml``, an experiment folder or an experiments root, as for
:meth:`~crystallize.ExperimentGraph.from_yaml`. Exit codes: 0 success, 1 a unit or an
experiment failed, 2 a user mistake (bad config, missing path, bad option; reported without a
traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._version import __version__
from ..config import did_you_mean, display_path, experiment_configs, load_experiment, scaffold
from ..errors import (
    ClusterError,
    ConfigError,
    ExperimentFailedError,
    GraphError,
    LimitError,
    ScaffoldError,
    StoreError,
    UnreadTreatmentKeyError,
)
from ..experiment import ExperimentGraph
from ..model import BASELINE, MAX_REPLICATES
from ..render import (
    REPORT_FORMATS,
    TB_MODES,
    ReportError,
    failure_lines,
    hypothesis_lines,
    summary_table,
    summary_title,
    write_report,
)
from ..running import DaskExecutor, Executor, plan_graph, treatment_labels, upstream_refs
from ..store import CACHE_DIR, ExperimentStore, StoredRun, metric_rows, stored_runs
from ._progress import RunProgress

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXECUTORS = ("process", "thread", "inline", "dask")
_STATE_STYLES = {"complete": "green", "stale": "yellow", "never run": "dim"}


class UsageError(Exception):
    """A user mistake on the command line; printed without a traceback (exit code 2)."""


def _load(path: str) -> ExperimentGraph:
    try:
        return ExperimentGraph.from_yaml(path)
    except GraphError as exc:  # cycles, duplicate names, missing producers
        raise UsageError(f"{display_path(Path(path))}: {exc}") from None


# -- run --------------------------------------------------------------------------------------
def _select_treatments(graph: ExperimentGraph, selected: Sequence[str]) -> None:
    """Keep only the ``selected`` treatments in every experiment (baseline always runs)."""
    available = sorted(
        {t.name for exp in graph.experiments.values() for t in exp.treatments} | {BASELINE}
    )
    for name in selected:
        if name not in available:
            raise UsageError(
                f"--treatment {name}: no experiment of the graph has this treatment"
                f"{did_you_mean(name, available)}. Treatments: {', '.join(available)}"
            )
    for exp in graph.experiments.values():
        exp.treatments = [t for t in exp.treatments if t.name in selected or t.name == BASELINE]


def _executor(args: argparse.Namespace, out: Console) -> str | Executor | None:
    """``--executor`` as given, or a Dask executor for ``--scheduler``/``--scheduler-file``."""
    cluster = ("--scheduler" if args.scheduler is not None else
               "--scheduler-file" if args.scheduler_file is not None else None)
    if cluster is not None and args.executor not in (None, "dask"):
        raise UsageError(
            f"{cluster} runs units on a Dask cluster, --executor {args.executor} runs them on "
            f"this machine: pass one of them (with {cluster}, --executor dask is implied)"
        )
    if cluster is None and args.executor != "dask":
        return args.executor
    return DaskExecutor(
        address=args.scheduler, scheduler_file=args.scheduler_file, max_workers=args.workers,
        wait_for_workers=args.wait_for_workers,
        say=lambda message: out.print(Text(message, style="dim")),
    )


def _check_names(graph: ExperimentGraph, names: Sequence[str], option: str) -> None:
    known = list(graph.experiments)
    for name in names:
        if name not in graph.experiments:
            raise UsageError(
                f"{option}{name}: no experiment of that name (experiments: "
                f"{', '.join(known)}){did_you_mean(name, known)}"
            )


def _dry_run(graph: ExperimentGraph, args: argparse.Namespace, out: Console) -> int:
    """Print what ``run`` would execute and reuse, per experiment and unit, and why."""
    table = Table("experiment", "run", "reuse", "why", title="dry run: nothing is executed")
    for name, planned in plan_graph(graph, replicates=args.replicates, strategy=args.strategy,
                                    force=args.force or ()).items():
        plan = planned.plan
        table.add_row(name, str(plan.units), str(len(plan.reuse)), plan.reason)
    out.print(table)
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: Console) -> int:
    if args.replicates is not None:
        MAX_REPLICATES.check(args.replicates, "--replicates")
    graph = _load(args.path)
    _check_names(graph, args.names, "")
    _check_names(graph, args.force or [], "--force ")
    if args.names:
        graph = graph.select(args.names)
        _check_names(graph, args.force or [], "--force ")  # forcing needs it in the run
    if args.treatment:
        _select_treatments(graph, args.treatment)
    if args.dry_run:
        return _dry_run(graph, args, out)
    executor = _executor(args, out)
    failure: ExperimentFailedError | None = None
    with RunProgress(out, graph.topological_order()) as progress:
        try:
            results = graph.run(
                strategy=args.strategy, replicates=args.replicates, executor=executor,
                max_workers=args.workers, on_event=progress.on_event, force=args.force or (),
                fail_fast=args.fail_fast,
            )
        except ExperimentFailedError as exc:
            failure, results = exc, exc.results
        except ImportError as exc:  # an optional dependency, e.g. dask for --executor dask
            raise UsageError(f"{exc}") from None
    for result in results.values():
        out.print(summary_title(result))
        out.print(summary_table(result))
        for line in hypothesis_lines(result):
            out.print(Text(line))
        for warning in result.warnings:
            out.print(Text(f"  warning: {warning}", style="yellow"))
    for worker, units in progress.lost.items():
        out.print(Text(f"worker {worker} was lost; re-ran elsewhere: {', '.join(units)}",
                       style="yellow"))
    failed_units = failure_lines(results, args.tb)
    if failed_units:
        out.print(Text("failed units:", style="bold red"))
        for line in failed_units:
            out.print(Text(line, style="red"), soft_wrap=True)
    # A run with any failed unit is not a success: its numbers are missing replicates.
    if failure is None and not failed_units:
        return EXIT_OK
    if failure is not None:
        out.print(Text(f"{len(failure.failures)} experiment(s) failed:", style="bold red"))
        for name, cause in failure.failures.items():
            out.print(Text(f"  {name}: {cause}", style="red"))
    return EXIT_FAILED


# -- metrics, report --------------------------------------------------------------------------
def _stored_runs(graph: ExperimentGraph) -> dict[str, list[StoredRun]]:
    return stored_runs({name: graph.experiments[name].store_plugin.root_dir.resolve()
                        for name in graph.topological_order()})


def cmd_metrics(args: argparse.Namespace, out: Console) -> int:
    rows = metric_rows(_stored_runs(_load(args.path)))
    if args.format == "json":
        sys.stdout.write(json.dumps([
            {"experiment": r.experiment, "condition": r.condition, "metric": r.metric,
             "versions": {f"v{n}": {"n": len(m.values), "mean": m.mean, "sd": m.sd,
                                    "values": m.values} for n, m in r.versions.items()}}
            for r in rows
        ], indent=2) + "\n")
        return EXIT_OK
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["experiment", "condition", "metric", "version", "n", "mean", "sd"])
        for r in rows:
            for n, m in r.versions.items():
                writer.writerow([r.experiment, r.condition, r.metric, f"v{n}", len(m.values),
                                 "" if m.mean is None else repr(m.mean),
                                 "" if m.sd is None else repr(m.sd)])
        return EXIT_OK
    if not rows:
        out.print("no stored metrics yet: run the experiments first (crystallize run PATH)")
        return EXIT_OK
    for name in dict.fromkeys(r.experiment for r in rows):
        mine = [r for r in rows if r.experiment == name]
        versions = sorted({n for r in mine for n in r.versions})
        table = Table("condition", "metric", *[f"v{n}" for n in versions],
                      title=name, title_justify="left", title_style="bold")
        for r in mine:
            table.add_row(r.condition, r.metric, *[
                r.versions[n].describe() if n in r.versions else "" for n in versions])
        out.print(table)
    return EXIT_OK


def cmd_report(args: argparse.Namespace, out: Console) -> int:
    graph = _load(args.path)
    try:
        data = write_report(_stored_runs(graph), Path(args.output))
    except ReportError as exc:
        raise UsageError(f"-o {args.output}: {exc}") from None
    units = sum(len(r.units()) for r in data.timeline)
    out.print(f"wrote {args.output}: {units} unit(s) of the last run, metrics of "
              f"{len(data.newest)} experiment(s)")
    return EXIT_OK


# -- status, graph, list ----------------------------------------------------------------------
def cmd_status(args: argparse.Namespace, out: Console) -> int:
    from ..running import experiment_status

    table = Table("experiment", "state", "version", "why")
    statuses = experiment_status(_load(args.path))
    roots = sorted({str(s.root) for s in statuses.values() if s.root is not None})
    out.print(f"store: {', '.join(roots) or '-'}")
    for name, status in statuses.items():
        version = "-" if status.version is None else f"v{status.version}"
        table.add_row(name, Text(status.state, style=_STATE_STYLES[status.state]), version,
                      status.reason)
    out.print(table)
    return EXIT_OK


def cmd_graph(args: argparse.Namespace, out: Console) -> int:
    from ..render import INSTALL_HINT, build_digraph, write_diagram

    digraph = build_digraph(_load(args.path))
    if args.output is None:
        sys.stdout.write(digraph.source)
        return EXIT_OK
    try:
        written, rendered = write_diagram(digraph, Path(args.output), args.format)
    except ValueError as exc:
        raise UsageError(f"-o {args.output}: {exc}") from None
    except OSError as exc:
        raise UsageError(
            f"-o {args.output}: cannot write it ({exc.strerror or exc}). Choose a path in a "
            "folder you can write to"
        ) from None
    out.print(f"wrote {written}")
    if not rendered:
        out.print(Text(INSTALL_HINT, style="yellow"))
    return EXIT_OK


def cmd_list(args: argparse.Namespace, out: Console) -> int:
    table = Table("experiment", "folder", "replicates", "treatments", "reads from")
    # Long cells wrap (and break inside long words) instead of being cut off with "…".
    for column in table.columns[1:]:
        column.overflow = "fold"
    table.columns[0].no_wrap = True
    broken = 0
    for config in experiment_configs(Path(args.root)):
        folder = str(display_path(config.parent))
        try:
            graph = ExperimentGraph.from_yaml(config)
        except (ConfigError, GraphError) as exc:
            broken += 1
            table.add_row(Text(config.parent.name, style="red"), folder, "", "",
                          Text(f"error: {exc}", style="red"))
            continue
        # The folder's experiment; the rest of the graph is what it reads from.
        name = graph.topological_order()[-1]
        exp = graph.experiments[name]
        upstreams = upstream_refs(graph, name)
        # 📈 marks graph experiments (they consume other experiments' outputs), as in the UI.
        shown = f"📈 {name}" if upstreams else name
        table.add_row(shown, folder, str(exp.replicates),
                      ", ".join(treatment_labels(graph, name)) or "-",
                      ", ".join(upstreams) or "-")
    out.print(table)
    return EXIT_USAGE if broken else EXIT_OK


# -- new --------------------------------------------------------------------------------------
def cmd_new(args: argparse.Namespace, out: Console) -> int:
    root = Path(args.root)
    written = scaffold(args.name, root, args.use or [], args.output or [])
    # The scaffold must load as it is; checking here catches a template out of step with the
    # config rules before the user does.
    load_experiment(written[0])
    for path in written:
        out.print(f"created {display_path(path)}")
    out.print(f"next: edit steps.py, then `crystallize run {display_path(written[0].parent)}`")
    return EXIT_OK


# -- ui ---------------------------------------------------------------------------------------
def cmd_ui(args: argparse.Namespace, out: Console) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"{args.root}: not a folder; pass the folder that holds your experiments")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        # Textual would draw escape codes into the pipe and wait for keys that never come.
        raise UsageError(
            "crystallize ui needs a terminal, and stdin or stdout is not one here (a pipe, a "
            "file, CI). Run it in a terminal; in scripts use crystallize run, status or list"
        )
    from ..ui import run_ui

    return run_ui(root, args.executor)


# -- clean ------------------------------------------------------------------------------------
def cmd_clean(args: argparse.Namespace, out: Console) -> int:
    if args.cache:
        return _clean_cache(_load(args.path), out)
    graph = _load(args.path)
    roots = sorted({str(e.store_plugin.root_dir.resolve()) for e in graph.experiments.values()})
    out.print(f"store: {', '.join(roots)}")
    table = Table("experiment", "removed", "kept")
    skipped: list[str] = []
    for name, exp in graph.experiments.items():
        store = ExperimentStore(exp.store_plugin.root_dir.resolve(), name)
        if not store.dir.exists() and not store.dir.is_symlink():
            table.add_row(name, "-", "never run")
            continue
        try:
            removal = store.clean(None if args.all else args.keep)
        except StoreError as exc:
            raise UsageError(f"{exc}; nothing more was removed") from None
        skipped += [f"{name}: {note}" for note in removal.skipped]
        if removal.in_use:
            skipped.append(f"{name}: kept {', '.join(removal.in_use)}: in use by a running "
                           "process")
        kept = ", ".join(f"v{n}" for n in store.version_numbers()) or "-"
        table.add_row(name, ", ".join(removal.removed) or "-", kept)
    out.print(table)
    for note in skipped:
        out.print(Text(note, style="yellow"))
    return EXIT_OK


def _clean_cache(graph: ExperimentGraph, out: Console) -> int:
    roots = sorted({e.store_plugin.root_dir.resolve() for e in graph.experiments.values()})
    for root in roots:
        cache = root / CACHE_DIR
        if cache.is_symlink():  # never delete through a link (its target is not ours)
            out.print(Text(f"skipped {display_path(cache)}: a symbolic link", style="yellow"))
            continue
        if not cache.is_dir():
            out.print(f"no step cache in {display_path(root)}")
            continue
        entries = sum(1 for p in cache.rglob("*") if p.is_file() and p.suffix == ".pkl")
        # Renamed first, so a run starting meanwhile makes a fresh cache instead of reading
        # one that is half deleted.
        doomed = cache.with_name(f"{CACHE_DIR}.deleting-{uuid.uuid4().hex[:8]}")
        cache.rename(doomed)
        shutil.rmtree(doomed)
        out.print(f"removed the step cache {display_path(cache)} ({entries} entries)")
    return EXIT_OK


# -- parsing ----------------------------------------------------------------------------------
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        # 1e9 is a whole number too; a cap checked later names its limit instead of the syntax
        try:
            number = float(text)
        except ValueError:
            number = 0.0
        value = int(number) if number.is_integer() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``crystallize``."""
    parser = argparse.ArgumentParser(
        prog="crystallize",
        description="Reproducible computational experiments as a DAG. PATH is a config.yaml, "
        "an experiment folder, or a folder of experiments.",
    )
    parser.add_argument("--version", action="version", version=f"crystallize {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace, Console], int],
                help: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help, description=help)
        cmd.set_defaults(handler=handler)
        return cmd

    run = command("run", cmd_run, "run experiments, prerequisites first, with progress bars")
    run.add_argument("path", metavar="PATH")
    run.add_argument("names", metavar="NAME", nargs="*",
                     help="run only these experiments of PATH (and their prerequisites)")
    run.add_argument("--force", action="append", metavar="NAME",
                     help="rerun this experiment and everything downstream of it, whatever "
                     "their strategy (repeatable)")
    run.add_argument("--fail-fast", action="store_true",
                     help="stop the whole run at the first failed unit (default: every branch "
                     "that can still run does)")
    run.add_argument("--tb", choices=TB_MODES,
                     help="worker tracebacks of failed units: long (all), short (none), no "
                     "(not even the message); default: the first in full")
    run.add_argument("--strategy", choices=("rerun", "resume"),
                     help="override every experiment's strategy")
    run.add_argument("--replicates", type=_positive, metavar="N",
                     help="override every experiment's replicates")
    run.add_argument("--workers", type=_positive, metavar="N",
                     help="worker processes/threads (default: all cores)")
    run.add_argument("--executor", choices=EXECUTORS, help="where units run (default: process)")
    cluster = run.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="run units on the Dask cluster of this scheduler "
                         "(tcp://HOST:PORT); implies --executor dask")
    cluster.add_argument("--scheduler-file", metavar="FILE",
                         help="run units on the Dask cluster whose scheduler wrote FILE "
                         "(dask scheduler --scheduler-file); implies --executor dask")
    run.add_argument("--wait-for-workers", type=_seconds, default=60.0, metavar="SECONDS",
                     help="how long a Dask cluster without workers is waited for (default: 60)")
    run.add_argument("--treatment", action="append", metavar="NAME",
                     help="run only this treatment (repeatable; baseline always runs)")
    run.add_argument("--dry-run", action="store_true",
                     help="show what would run and what would be reused, per experiment and "
                     "unit, and why; runs and writes nothing")

    status = command("status", cmd_status,
                     "show each experiment as complete, stale (and why) or never run")
    status.add_argument("path", metavar="PATH")

    graph = command("graph", cmd_graph, "draw the experiment graph with Graphviz")
    graph.add_argument("path", metavar="PATH")
    graph.add_argument("-o", "--output", metavar="FILE",
                       help="file to write (format from its suffix: svg, png, pdf, dot...); "
                       "without it the DOT source is printed")
    graph.add_argument("--format", help="format when FILE has no suffix (default: svg)")

    metrics = command("metrics", cmd_metrics,
                      "each experiment's metrics per condition across its stored versions")
    metrics.add_argument("path", metavar="PATH")
    metrics.add_argument("--format", choices=("table", "csv", "json"), default="table",
                         help="table (default), or csv/json on stdout for export")

    report = command("report", cmd_report,
                     "draw the last run: units per worker over time, each metric per treatment")
    report.add_argument("path", metavar="PATH")
    report.add_argument("-o", "--output", metavar="FILE", default="report.html",
                        help=f"file to write; its suffix picks the format "
                        f"({', '.join(REPORT_FORMATS)}; default: report.html)")

    listing = command("list", cmd_list, "list the experiments in a folder of experiments")
    listing.add_argument("root", metavar="ROOT", nargs="?", default=".")

    new = command("new", cmd_new, "scaffold a folder experiment")
    new.add_argument("name", metavar="NAME")
    new.add_argument("--root", default="experiments", metavar="DIR",
                     help="folder of experiments to create it in (default: experiments)")
    new.add_argument("--use", action="append", metavar="EXPERIMENT#OUTPUT",
                     help="wire an upstream output into datasource: (repeatable)")
    new.add_argument("--output", action="append", metavar="ALIAS",
                     help="declare a JSON output the example step writes (repeatable)")

    ui = command("ui", cmd_ui, "open the interactive terminal UI (also: no COMMAND, in a terminal)")
    ui.add_argument("root", metavar="ROOT", nargs="?", default=".")
    ui.add_argument("--executor", choices=EXECUTORS, help="where units run (default: process)")

    clean = command("clean", cmd_clean,
                    "delete old complete versions, failed and abandoned ones, and leftovers of "
                    "interrupted pruning (versions a running process reads are kept)")
    clean.add_argument("path", metavar="PATH")
    how_many = clean.add_mutually_exclusive_group()
    how_many.add_argument("--keep", type=_positive, default=1, metavar="N",
                          help="complete versions to keep per experiment (default: 1)")
    how_many.add_argument("--all", action="store_true",
                          help="delete every stored version of the experiments")
    how_many.add_argument("--cache", action="store_true",
                          help="empty the step cache (cacheable=True steps) instead; stored "
                          "versions are left alone")
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _report(console: Console, message: str) -> None:
    console.print(Text("error: ", style="bold red") + Text(message, style="red"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``crystallize`` command line; returns the exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # argparse would print the top-level usage; the subcommand's says what it accepts.
        subcommand = _subparsers(parser).get(args.command, parser)
        subcommand.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            parser.print_help()  # no terminal to draw the UI in
            return EXIT_OK
        args = parser.parse_args(["ui"])
    out, err = Console(), Console(stderr=True)
    try:
        return int(args.handler(args, out))
    except (ConfigError, UsageError, ScaffoldError, LimitError, ClusterError,
            UnreadTreatmentKeyError) as exc:
        _report(err, str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _report(err, "interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:  # the store or a file the command needs: say which, and why
        where = f"{exc.filename}: " if exc.filename else ""
        _report(err, f"{where}{exc.strerror or exc}")
        return EXIT_FAILED

