"""The terminal UI (``crystallize`` without arguments): browse, run and scaffold experiments."""

from ._app import CrystallizeApp, RunScreen, run_ui

__all__ = ["CrystallizeApp", "RunScreen", "run_ui"]
