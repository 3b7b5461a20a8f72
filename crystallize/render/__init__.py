"""Views of results and graphs shared by the front ends and :meth:`ExperimentGraph.visualize`:
rich summary tables, Graphviz diagrams and run reports (matplotlib).

Reads the model and the status of a graph (:mod:`crystallize.running`); never runs anything.
"""

from ._report import FORMATS as REPORT_FORMATS
from ._report import ReportData, ReportError, write_report
from ._summary import (
    TB_MODES,
    failure_lines,
    format_values,
    hypothesis_lines,
    summary_table,
    summary_title,
    worker_traceback,
)
from ._visualize import INSTALL_HINT, build_digraph, visualize_graph, write_diagram

__all__ = [
    "INSTALL_HINT",
    "REPORT_FORMATS",
    "TB_MODES",
    "ReportData",
    "ReportError",
    "build_digraph",
    "failure_lines",
    "format_values",
    "hypothesis_lines",
    "summary_table",
    "summary_title",
    "visualize_graph",
    "worker_traceback",
    "write_diagram",
    "write_report",
]
