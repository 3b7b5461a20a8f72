"""
Stable fingerprints of code and values: the basis of *resume*.

An experiment is reloaded from disk instead of being rerun only if its fingerprint is
unchanged, so the fingerprints computed here are:

* **stable** across processes and interpreter runs: nothing depends on :func:`id`, on
  :func:`hash` of strings or on memory addresses, so ``PYTHONHASHSEED`` is irrelevant;
* **insensitive** to comments, docstrings, whitespace, formatting and decorators;
* **sensitive** to any real change in the code of a callable, in the project-local helpers
  it calls (transitively), in the module-level constants those read, in the values captured
  by closures and in default argument values.

Code is fingerprinted from its normalised abstract syntax tree. When the source is not
available (REPL, :func:`exec`, ``python -c``) the bytecode is used instead, which is stable
between processes running the same Python version but not across Python versions.

Only *project-local* code is walked: anything installed in the interpreter's prefix, in
``site-packages``/``dist-packages``, in the standard library, and the ``crystallize``
framework itself is treated as a fixed dependency and never contributes its source.
"""


from ._api import code_fingerprint, code_fingerprint_parts, value_fingerprint
from ._code import known_code, load_known_code
from ._encoding import combine
from ._walker import snapshot

__all__ = [
    "code_fingerprint", "code_fingerprint_parts", "combine", "known_code", "load_known_code",
    "snapshot", "value_fingerprint",
]
