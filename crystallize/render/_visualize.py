"""Graphviz diagrams of an :class:`~crystallize.ExperimentGraph`.

Each node shows the experiment's name, replicates, treatments (inherited ones included, as a
run would use them) and its state in the store (see
:func:`~crystallize.running.experiment_status`); each edge is labelled with the artifacts that
flow along it. Rendering needs Graphviz's ``dot`` binary;
without it the :class:`graphviz.Digraph` is still built and its DOT source can be written.
"""

from __future__ import annotations

import html
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import graphviz

from ..running import Status, configure, experiment_status

if TYPE_CHECKING:
    from ..experiment import ExperimentGraph

INSTALL_HINT = (
    "Graphviz's `dot` program was not found, so the diagram was not rendered; install it "
    "(apt-get install graphviz, brew install graphviz or conda install graphviz) to render it"
)
#: Formats written as DOT source, which needs no ``dot`` binary.
SOURCE_FORMATS = ("dot", "gv")

_COLORS = {"complete": "#d9f2d9", "stale": "#fff0c2", "never run": "#eeeeee"}
_log = logging.getLogger("crystallize")


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _label(name: str, lines: list[str], status: Status | None) -> str:
    # HTML-like labels (<...>) give a bold title; everything user-supplied is escaped.
    rows = [f"<b>{html.escape(name)}</b>"] + [html.escape(line) for line in lines]
    if status is not None:
        rows.append(f"<i>{html.escape(_short(status.describe()))}</i>")
    return "<" + "<br/>".join(rows) + ">"


def build_digraph(
    graph: ExperimentGraph, *, show_state: bool = True, rankdir: str = "LR", **graph_attr: str
) -> graphviz.Digraph:
    """The diagram of ``graph`` as a :class:`graphviz.Digraph` (nothing is rendered).

    :param show_state: read each experiment's state from the store (complete / stale / never
        run) and colour its node accordingly
    :param rankdir: the layout direction (``LR`` left to right, ``TB`` top to bottom)
    :param graph_attr: further Graphviz graph attributes, e.g. ``bgcolor="white"``
    """
    experiments = configure(graph)
    statuses = experiment_status(graph) if show_state else {}
    digraph = graphviz.Digraph(
        "crystallize",
        graph_attr={"rankdir": rankdir, **graph_attr},
        node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                   "fillcolor": "white"},
        edge_attr={"fontname": "Helvetica", "fontsize": "10"},
    )
    for name, exp in experiments.items():
        status = statuses.get(name)
        treatments = ", ".join(t.name for t in exp.treatments) or "none"
        lines = [f"replicates: {exp.replicates}", _short(f"treatments: {treatments}")]
        attrs = {"fillcolor": _COLORS[status.state]} if status is not None else {}
        digraph.node(name, label=_label(name, lines, status), **attrs)
    for upstream, downstream in graph.graph.edges:
        files = sorted({
            a.name for a in experiments[downstream].consumed_artifacts() if a.producer == upstream
        })
        digraph.edge(upstream, downstream, label=", ".join(files))
    return digraph


#: The formats named in messages (Graphviz knows many more).
COMMON_FORMATS = ("svg", "png", "pdf", "jpg", "gif", "webp", "eps", "json", "dot")


def write_diagram(
    digraph: graphviz.Digraph, path: Path, format: str | None = None
) -> tuple[Path, bool]:
    """Render ``digraph`` to ``path``; returns the path written and whether it has the format
    asked for.

    The format is ``path``'s suffix when it is a Graphviz format, else ``format`` (which is then
    appended to a suffix-less path; default svg). A suffix Graphviz does not know is an error
    unless ``format`` is given. ``.dot``/``.gv`` paths get the DOT source. Without the ``dot``
    binary the DOT source is written next to ``path`` (suffix ``.dot``) instead, and the second
    value is False.

    :raises ValueError: if the format is not one Graphviz knows
    :raises graphviz.CalledProcessError: if ``dot`` fails
    """
    suffix = path.suffix.lstrip(".").lower()
    if suffix and suffix not in graphviz.FORMATS and format is None:
        raise ValueError(
            f"unknown diagram format {path.suffix!r}; name the file with a format Graphviz "
            f"writes: {', '.join('.' + f for f in COMMON_FORMATS)} (or any of `dot -T?`), or "
            "pass the format explicitly"
        )
    fmt = suffix if suffix in graphviz.FORMATS else (format or "svg")
    if fmt not in graphviz.FORMATS:
        raise ValueError(
            f"unknown diagram format {fmt!r}; use one of svg, png, pdf, dot "
            f"(any of: {', '.join(sorted(graphviz.FORMATS))})"
        )
    if not path.suffix:
        path = path.with_name(f"{path.name}.{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt not in SOURCE_FORMATS and shutil.which("dot"):
        try:
            path.write_bytes(digraph.pipe(format=fmt))
            return path, True
        except graphviz.ExecutableNotFound:
            pass  # removed between the check and the call: fall back to the source
    source = path if fmt in SOURCE_FORMATS else path.with_suffix(".dot")
    source.write_text(digraph.source, encoding="utf-8")
    return source, fmt in SOURCE_FORMATS


def visualize_graph(
    graph: ExperimentGraph, path: str | Path | None = None, format: str = "svg", **options: Any
) -> graphviz.Digraph:
    """Build the diagram of ``graph`` and, if ``path`` is given, write it there.

    Rendered with ``dot`` when it is installed; otherwise the DOT source is written (to
    ``path`` with the suffix ``.dot``) and a one-line hint on installing Graphviz is logged to
    the ``crystallize`` logger. ``options`` go to :func:`build_digraph` (``show_state``,
    ``rankdir`` and Graphviz graph attributes).

    :return: the :class:`graphviz.Digraph`, rendered or not
    """
    digraph = build_digraph(graph, **options)
    if path is not None:
        _, rendered = write_diagram(digraph, Path(path), format)
        if not rendered:
            _log.warning(INSTALL_HINT)
    elif shutil.which("dot") is None:
        _log.warning(INSTALL_HINT)
    return digraph
