"""The ``crystallize`` command line: the top of the package, calling every layer below."""

from ._main import main

__all__ = ["main"]
