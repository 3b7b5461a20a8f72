"""Parts of the UI's screens: widgets whose state reads without colour (a terminal may have
none, a reader may not see it), and the caching choices a session keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.segment import Segment
from textual.strip import Strip
from textual.widgets import Checkbox, SelectionList

if TYPE_CHECKING:
    from ..experiment import ExperimentGraph


class MarkedCheckbox(Checkbox):
    """A checkbox whose state shows without colour: ``X`` when on, blank when off."""

    @property
    def BUTTON_INNER(self) -> str:  # type: ignore[override]  # Textual's name for it
        return "X" if self.value else " "


class MarkedSelectionList(SelectionList[str]):
    """A selection list whose choices show ``X`` when chosen and blank when not, not only by
    colour."""

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        segments = list(strip)
        if len(segments) < 2 or segments[1].style is None:
            return strip
        index = segments[1].style.meta.get("option")
        if index is None:
            return strip
        chosen = self.get_option_at_index(index).value in self.selected
        segments[1] = Segment("X" if chosen else " ", segments[1].style)
        return Strip(segments, strip.cell_length)


@dataclass
class CachingChoices:
    """What ``l`` toggled on run screens, kept for the session so reopening one keeps it.

    Keyed by the folder holding the experiments and the experiment's name (names are unique
    among sibling folders).
    """

    strategies: dict[tuple[Path, str], str] = field(default_factory=dict)
    steps: dict[tuple[Path, str, int], bool] = field(default_factory=dict)

    def apply(self, folder: Path, graph: ExperimentGraph) -> None:
        for name, exp in graph.experiments.items():
            exp.strategy = self.strategies.get((folder, name), exp.strategy)
            for index, step in enumerate(exp.pipeline.steps):
                step.cacheable = self.steps.get((folder, name, index), step.cacheable)
