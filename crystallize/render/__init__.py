"""Views of results and graphs shared by the front ends and :meth:`ExperimentGraph.visualize`:
rich summary tables and Graphviz diagrams.

Reads the model and the status of a graph (:mod:`crystallize.running`); never runs anything.
"""

from ._summary import format_values, hypothesis_lines, summary_table, summary_title
from ._visualize import INSTALL_HINT, build_digraph, visualize_graph, write_diagram

__all__ = [
    "INSTALL_HINT",
    "build_digraph",
    "format_values",
    "hypothesis_lines",
    "summary_table",
    "summary_title",
    "visualize_graph",
    "write_diagram",
]
