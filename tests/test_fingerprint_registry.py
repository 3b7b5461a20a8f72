"""Values of other libraries are fingerprinted by rules registered lazily, per library."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numpy")


def _run(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def test_fingerprinting_plain_values_never_imports_numpy() -> None:
    out = _run("""
        import sys
        from crystallize.fingerprint import value_fingerprint
        value_fingerprint([1, 2.5, {"a": (None, b"x")}, {3}])
        print("numpy" in sys.modules)
    """)
    assert out == ["False"]


def test_a_subclass_from_elsewhere_registers_numpy_rules_on_first_sight() -> None:
    # The first value seen is a subclass defined outside numpy: the rules must still be found
    # through its bases, or the array would be fingerprinted by its attributes instead.
    out = _run("""
        import numpy as np
        from crystallize.fingerprint import value_fingerprint

        class Tagged(np.ndarray):
            pass

        data = np.arange(6.0).reshape(2, 3)
        first = value_fingerprint(data.view(Tagged))
        print(first == value_fingerprint(data))
        print(first == value_fingerprint(data + 1))
        print(value_fingerprint(np.float64(1.5)) == value_fingerprint(1.5))
    """)
    assert out == ["True", "False", "False"]
