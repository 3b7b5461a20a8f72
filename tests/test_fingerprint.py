"""Fingerprints of code and values (the basis of resume), on real modules written to disk."""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import importlib
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crystallize.fingerprint._code as fingerprint_module
from crystallize.fingerprint import (
    code_fingerprint,
    code_fingerprint_parts,
    combine,
    value_fingerprint,
)

Loader = Callable[..., ModuleType]

# The step module every "project version" below is a variation of. Module names are kept
# across versions: the names of helper modules are part of a fingerprint (only the name of the
# step's own module is not, see test_module_name_does_not_matter).
BASE = '''
import json

THRESHOLD = 3


def helper(x):
    return x * THRESHOLD


def step(data, scale=2):
    """Scale every item, then serialise."""
    total = 0
    for item in data:  # accumulate
        total += helper(item) * scale
    return json.dumps(total)
'''


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Loader]:
    """
    Write a version of a small project into a fresh directory and import it.

    Every call is a new directory (never a rewrite of the same file, which the source cache of
    linecache could miss) holding the given modules; previously loaded versions are dropped
    from ``sys.modules`` so that the new files are imported.
    """
    versions = itertools.count()
    names: set[str] = set()
    current: list[str] = []

    def forget() -> None:
        for name in list(sys.modules):
            if name.partition(".")[0] in names:
                del sys.modules[name]
        for entry in current:
            sys.path.remove(entry)
        current.clear()

    def load(
        files: dict[str, str], main: str = "fp_steps", *, root: Path | None = None
    ) -> ModuleType:
        forget()
        directory = root if root is not None else tmp_path / f"version{next(versions)}"
        for name, source in files.items():
            path = directory / (name.replace(".", os.sep) + ".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
            names.add(name.partition(".")[0])
        names.add(main.partition(".")[0])
        # The directory stays importable until the next version, because imports made inside
        # functions are resolved when the function is fingerprinted.
        sys.path.insert(0, str(directory))
        current.append(str(directory))
        importlib.invalidate_caches()
        return importlib.import_module(main)

    yield load
    forget()


def step_fingerprint(project: Loader, source: str, **files: str) -> str:
    module = project({"fp_steps": source, **files})
    return code_fingerprint(module.step)


def step_parts(project: Loader, source: str, **files: str) -> dict[str, str]:
    module = project({"fp_steps": source, **files})
    return code_fingerprint_parts(module.step)


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}


# --- what must not matter ---------------------------------------------------------------------


def test_comment_only_edit_keeps_fingerprint(project: Loader) -> None:
    edited = BASE.replace("# accumulate", "# sum up, since the scale is linear").replace(
        "    total = 0\n", "    # start from nothing\n    total = 0  # an int\n"
    )
    assert edited != BASE
    assert step_fingerprint(project, edited) == step_fingerprint(project, BASE)


def test_docstring_edit_keeps_fingerprint(project: Loader) -> None:
    reworded = BASE.replace("Scale every item, then serialise.", "Completely new words.")
    removed = BASE.replace('    """Scale every item, then serialise."""\n', "")
    added = BASE.replace("def helper(x):\n", 'def helper(x):\n    """Multiply."""\n')
    reference = step_fingerprint(project, BASE)
    assert step_fingerprint(project, reworded) == reference
    assert step_fingerprint(project, removed) == reference
    assert step_fingerprint(project, added) == reference


def test_reformatting_keeps_fingerprint(project: Loader) -> None:
    reformatted = '''
import json
THRESHOLD = (
    3
)
def helper(x): return (x*THRESHOLD)



def step(
  data,
  scale = 2,
):
  """Scale every item, then serialise."""
  total=0
  for item in data: total += (helper(item)
                              * scale)
  return json.dumps(
      total,
  )
'''
    assert step_fingerprint(project, reformatted) == step_fingerprint(project, BASE)


def test_moving_functions_within_the_file_keeps_fingerprint(project: Loader) -> None:
    moved = (
        "\n\n\ndef unrelated():\n    return 1\n"
        + BASE.replace("import json\n", "")
        + ("\nimport json\n")
    )
    assert step_fingerprint(project, moved) == step_fingerprint(project, BASE)


def test_module_name_does_not_matter(tmp_path: Path) -> None:
    # The same file may run as __main__ once and be imported as a module the next time, or be
    # loaded by path under a generated name.
    path = tmp_path / "experiment.py"
    path.write_text(textwrap.dedent(BASE))
    loaded = []
    for name in ("fp_as_main", "fp_experiment_a", "fp_experiment_b"):
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
            loaded.append((code_fingerprint(module.step), code_fingerprint_parts(module.step)))
        finally:
            del sys.modules[name]
    assert loaded[0] == loaded[1] == loaded[2]
    assert list(loaded[0][1]) == ["step", "helper", "THRESHOLD"]


DECORATORS = """
import functools


def tag(fn):
    fn.tagged = True
    return fn


def tag_with(label):
    def decorate(fn):
        return fn
    return decorate


def logged(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper
"""


@pytest.mark.parametrize(
    "decorators",
    ["@tag\n", '@tag_with("fast")\n', "@logged\n", '@tag\n@tag_with("x")\n@logged\n'],
    ids=["plain", "with-arguments", "functools.wraps", "stacked"],
)
def test_decorator_change_keeps_fingerprint(project: Loader, decorators: str) -> None:
    plain = DECORATORS + BASE
    decorated = DECORATORS + BASE.replace("def step(", decorators + "def step(")
    assert step_fingerprint(project, decorated) == step_fingerprint(project, plain)


def test_fingerprint_is_repeatable_and_cached(project: Loader) -> None:
    module = project({"fp_steps": BASE})
    first = code_fingerprint(module.step)
    assert all(code_fingerprint(module.step) == first for _ in range(10))
    assert module.step.__code__ in fingerprint_module._CODE_INFO


# --- what must matter -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("* scale", "+ scale"),
        ("total = 0", "total = 1"),
        ("scale=2", "scale=3"),
        ("json.dumps(total)", "json.dumps(data)"),
        ("for item in data:", "for item in reversed(data):"),
        ("return x * THRESHOLD", "return x ** THRESHOLD"),
    ],
)
def test_one_token_change_changes_fingerprint(project: Loader, old: str, new: str) -> None:
    assert old in BASE
    assert step_fingerprint(project, BASE.replace(old, new)) != step_fingerprint(project, BASE)


HELPERS = """
import fp_more


def normalise(x):
    return x / 2


def offset(x):
    return fp_more.shift(x)
"""

MORE = """
def shift(x):
    return x + 1
"""

USES_HELPERS = """
import fp_helpers
from fp_helpers import offset


def step(x):
    return fp_helpers.normalise(x) + offset(x)
"""


def test_change_in_helper_module_changes_fingerprint_and_names_the_helper(
    project: Loader,
) -> None:
    before = step_parts(project, USES_HELPERS, fp_helpers=HELPERS, fp_more=MORE)
    assert set(before) == {
        "step",
        "fp_helpers.normalise",
        "fp_helpers.offset",
        "fp_more.shift",
    }
    direct = step_parts(
        project, USES_HELPERS, fp_helpers=HELPERS.replace("x / 2", "x / 3"), fp_more=MORE
    )
    assert changed(before, direct) == {"fp_helpers.normalise"}
    # Two calls away: offset -> fp_more.shift.
    indirect = step_parts(
        project, USES_HELPERS, fp_helpers=HELPERS, fp_more=MORE.replace("x + 1", "x - 1")
    )
    assert changed(before, indirect) == {"fp_more.shift"}


def test_change_in_same_module_helper_is_reported(project: Loader) -> None:
    before = step_parts(project, BASE)
    after = step_parts(project, BASE.replace("return x * THRESHOLD", "return x * THRESHOLD + 0"))
    assert changed(before, after) == {"helper"}


def test_helpers_imported_inside_the_function_are_walked(project: Loader) -> None:
    lazy = """
    def step(x):
        import fp_helpers
        from fp_more import shift
        return fp_helpers.normalise(shift(x))
    """
    before = step_parts(project, lazy, fp_helpers=HELPERS, fp_more=MORE)
    assert {"fp_helpers.normalise", "fp_more.shift"} <= set(before)
    after = step_parts(project, lazy, fp_helpers=HELPERS.replace("x / 2", "x // 2"), fp_more=MORE)
    assert changed(before, after) == {"fp_helpers.normalise"}


def test_module_level_constant_change_changes_fingerprint(project: Loader) -> None:
    before = step_parts(project, BASE)
    assert before["THRESHOLD"] == value_fingerprint(3)
    after = step_parts(project, BASE.replace("THRESHOLD = 3", "THRESHOLD = 4"))
    assert changed(before, after) == {"THRESHOLD"}


def test_constant_of_another_module_reached_by_attribute(project: Loader) -> None:
    source = """
    import fp_config


    def step(x):
        return x * fp_config.LIMITS["high"]
    """
    config = 'LIMITS = {"low": 1, "high": (2, 3.5)}\nUNUSED = 1\n'
    before = step_parts(project, source, fp_config=config)
    assert set(before) == {"step", "fp_config.LIMITS"}
    assert step_parts(project, source, fp_config=config.replace("UNUSED = 1", "UNUSED = 2")) == (
        before
    )
    after = step_parts(project, source, fp_config=config.replace("3.5", "3.75"))
    assert changed(before, after) == {"fp_config.LIMITS"}


def test_cached_helpers_and_module_level_instances(project: Loader) -> None:
    source = """
    import functools


    class Normaliser:
        def __init__(self, scale):
            self.scale = scale

        def apply(self, x):
            return x / self.scale


    NORMALISE = Normaliser(scale=2)


    @functools.lru_cache(maxsize=None)
    def cached(x):
        return x + 1


    def step(x):
        return NORMALISE.apply(cached(x))
    """
    before = step_parts(project, source)
    assert {"cached", "Normaliser", "NORMALISE"} <= set(before)
    rescaled = step_parts(project, source.replace("scale=2", "scale=3"))
    assert changed(before, rescaled) == {"NORMALISE"}
    edited = step_parts(project, source.replace("return x + 1", "return x + 2"))
    assert changed(before, edited) == {"cached"}


def test_rebinding_a_constant_at_runtime_is_noticed(project: Loader) -> None:
    module = project({"fp_steps": BASE})
    before = code_fingerprint(module.step)
    module.THRESHOLD = 4
    assert code_fingerprint(module.step) != before
    module.THRESHOLD = 3
    assert code_fingerprint(module.step) == before


def test_globals_the_function_assigns_are_state_not_constants(project: Loader) -> None:
    source = """
    CALLS = 0


    def step(x):
        global CALLS
        CALLS += 1
        return x
    """
    module = project({"fp_steps": source})
    before = code_fingerprint_parts(module.step)
    module.step(1)
    assert code_fingerprint_parts(module.step) == before
    assert "CALLS" not in before


# --- what must not be walked ------------------------------------------------------------------


def test_stdlib_site_packages_and_framework_are_not_walked(project: Loader, tmp_path: Path) -> None:
    library = tmp_path / "env" / "lib" / "site-packages"
    library.mkdir(parents=True)
    (library / "fp_fakelib.py").write_text("def tool(x):\n    return x\n")
    sys.path.insert(0, str(library))
    try:
        source = """
        import json
        import os.path

        import fp_fakelib
        import yaml
        from crystallize.fingerprint import combine


        def step(x):
            text = json.dumps(x) + os.path.join("a", "b") + yaml.safe_dump(x)
            return combine(fp_fakelib.tool(text))
        """
        parts = step_parts(project, source)
    finally:
        sys.path.remove(str(library))
        sys.modules.pop("fp_fakelib", None)
    assert list(parts) == ["step"]


def test_recursion_cycle_between_helpers_terminates(project: Loader) -> None:
    source = """
    def ping(n):
        return 0 if n <= 0 else pong(n - 1)


    def pong(n):
        return 1 if n <= 0 else ping(n - 1)


    def step(n):
        return ping(n) + step(n - 1) if n > 100 else 0
    """
    before = step_parts(project, source)
    assert set(before) == {"step", "ping", "pong"}
    after = step_parts(project, source.replace("return 1 if", "return 2 if"))
    assert changed(before, after) == {"pong"}


def test_helpers_beyond_the_depth_limit_are_not_walked(project: Loader) -> None:
    chain = "\n".join(f"def h{i}(x):\n    return h{i + 1}(x)\n" for i in range(12))
    source = chain + "def h12(x):\n    return x\n\ndef step(x):\n    return h0(x)\n"
    parts = step_parts(project, source)
    assert "h7" in parts
    assert "h8" not in parts


# --- lambdas, closures, partials, methods -----------------------------------------------------


def test_lambda_fingerprint(project: Loader) -> None:
    source = """
    double = lambda x: x * 2  # noqa: E731
    ops = [lambda a: a + 1, lambda b: b * 2]
    twins = (lambda x: x + 1, lambda x: x + 2)
    """
    first = project({"fp_steps": source})
    fingerprints = {
        name: code_fingerprint(obj)
        for name, obj in [
            ("double", first.double),
            ("op0", first.ops[0]),
            ("op1", first.ops[1]),
            ("twin0", first.twins[0]),
            ("twin1", first.twins[1]),
        ]
    }
    assert len(set(fingerprints.values())) == 5

    cosmetic = project(
        {"fp_steps": source.replace("x * 2  # noqa: E731", "(x*2)").replace("b * 2]", "b*2 ]  # ")}
    )
    assert code_fingerprint(cosmetic.double) == fingerprints["double"]
    assert code_fingerprint(cosmetic.ops[1]) == fingerprints["op1"]

    edited = project({"fp_steps": source.replace("x * 2", "x * 3").replace("x + 2)", "x + 5)")})
    assert code_fingerprint(edited.double) != fingerprints["double"]
    # Identical parameters on one line: told apart by bytecode, which still sees the edit.
    assert code_fingerprint(edited.twins[0]) == fingerprints["twin0"]
    assert code_fingerprint(edited.twins[1]) != fingerprints["twin1"]


def test_closure_value_change_changes_fingerprint(project: Loader) -> None:
    source = """
    def make(factor, transform=None):
        def step(x):
            return transform(x) * factor if transform else x * factor
        return step


    def square(x):
        return x * x


    def cube(x):
        return x * x * x
    """
    module = project({"fp_steps": source})
    assert code_fingerprint(module.make(2)) == code_fingerprint(module.make(2))
    assert code_fingerprint(module.make(2)) != code_fingerprint(module.make(3))
    assert code_fingerprint(module.make(2)) != code_fingerprint(module.make(2.0))
    assert code_fingerprint(module.make(2, module.square)) != code_fingerprint(
        module.make(2, module.cube)
    )
    edited = project({"fp_steps": source.replace("return x * x\n", "return x * x + 0\n")})
    assert code_fingerprint(module.make(2, module.square)) != code_fingerprint(
        edited.make(2, edited.square)
    )


def test_recursive_inner_function_terminates() -> None:
    def make() -> Callable[[int], int]:
        def countdown(n: int) -> int:
            return 0 if n <= 0 else countdown(n - 1)

        return countdown

    assert code_fingerprint(make()) == code_fingerprint(make())


def test_partial(project: Loader) -> None:
    module = project({"fp_steps": BASE})
    reference = code_fingerprint(functools.partial(module.step, scale=2))
    assert code_fingerprint(functools.partial(module.step, scale=2)) == reference
    assert code_fingerprint(functools.partial(module.step, scale=3)) != reference
    assert code_fingerprint(functools.partial(module.step, [1], scale=2)) != reference
    assert code_fingerprint(module.step) != reference

    parts = code_fingerprint_parts(functools.partial(module.step, scale=2))
    assert list(parts)[0] == "functools.partial(step)"
    assert "helper" in parts

    edited = project({"fp_steps": BASE.replace("* scale", "- scale")})
    assert code_fingerprint(functools.partial(edited.step, scale=2)) != reference


CLASSES = '''
THRESHOLD = 3


def helper(x):
    return x + 1


class Base:
    def prepare(self, x):
        return helper(x)


class Model(Base):
    """A model."""

    def __init__(self, weight):
        self.weight = weight

    def predict(self, x):
        return self.prepare(x) * self.weight

    def __call__(self, x):
        return self.predict(x) > THRESHOLD
'''


def test_bound_method_includes_its_class(project: Loader) -> None:
    module = project({"fp_steps": CLASSES})
    parts = code_fingerprint_parts(module.Model(2).predict)
    assert list(parts)[0] == "Model.predict"
    assert {"Model", "Base", "helper"} <= set(parts)

    edited = project({"fp_steps": CLASSES.replace("return helper(x)", "return helper(x) - 1")})
    after = code_fingerprint_parts(edited.Model(2).predict)
    assert changed(parts, after) == {"Base"}
    # Plain settings of the bound instance count.
    reweighted = code_fingerprint_parts(edited.Model(3).predict)
    assert changed(after, reweighted) == {"Model.predict"}


def test_callable_instance_and_class(project: Loader) -> None:
    module = project({"fp_steps": CLASSES})
    instance_parts = code_fingerprint_parts(module.Model(2))
    assert list(instance_parts)[0] == "Model()"
    assert {"Base", "helper", "THRESHOLD"} <= set(instance_parts)
    assert code_fingerprint(module.Model(2)) == code_fingerprint(module.Model(2))
    assert code_fingerprint(module.Model(2)) != code_fingerprint(module.Model(3))

    class_parts = code_fingerprint_parts(module.Model)
    assert list(class_parts)[0] == "Model"
    docstring_only = project({"fp_steps": CLASSES.replace('"""A model."""', '"""Other."""')})
    assert code_fingerprint_parts(docstring_only.Model) == class_parts
    edited = project({"fp_steps": CLASSES.replace("> THRESHOLD", ">= THRESHOLD")})
    assert changed(class_parts, code_fingerprint_parts(edited.Model)) == {"Model"}


def test_code_without_source_falls_back_to_bytecode() -> None:
    template = '''
def generated(x, k=2):
    """Docstring."""
    return {x: x * k for x in range(3)}


class Generated:
    """Docstring."""

    def run(self, x):
        return x + 1
'''

    def build(source: str) -> dict[str, Any]:
        namespace: dict[str, Any] = {"__name__": "fp_generated"}
        exec(compile(source, "<generated>", "exec"), namespace)
        return namespace

    reference = build(template)
    assert code_fingerprint(reference["generated"]) == code_fingerprint(
        build(template)["generated"]
    )
    cosmetic = build(template.replace("Docstring.", "Other words.").replace("x * k", "(x*k)"))
    assert code_fingerprint(cosmetic["generated"]) == code_fingerprint(reference["generated"])
    assert code_fingerprint(cosmetic["Generated"]) == code_fingerprint(reference["Generated"])
    edited = build(template.replace("x * k", "x + k").replace("x + 1", "x + 2"))
    assert code_fingerprint(edited["generated"]) != code_fingerprint(reference["generated"])
    assert code_fingerprint(edited["Generated"]) != code_fingerprint(reference["Generated"])


def test_builtins_and_library_callables() -> None:
    assert code_fingerprint(len) == code_fingerprint(len)
    assert code_fingerprint(len) != code_fingerprint(abs)
    assert code_fingerprint([1].append) != code_fingerprint([2].append)
    assert list(code_fingerprint_parts(json.dumps)) == ["dumps"]


def test_non_callable_is_rejected() -> None:
    with pytest.raises(TypeError, match="expected a callable"):
        code_fingerprint(42)  # type: ignore[arg-type]


# --- values -----------------------------------------------------------------------------------


def test_value_fingerprint_distinguishes_types() -> None:
    values = [1, 1.0, True, "1", b"1", None, 0, False, 0.0, -0.0, "", b"", 1 + 0j]
    assert len({value_fingerprint(value) for value in values}) == len(values)
    assert value_fingerprint([1, 2]) != value_fingerprint((1, 2))
    assert value_fingerprint({1, 2}) != value_fingerprint(frozenset({1, 2}))
    assert value_fingerprint(["ab"]) != value_fingerprint(["a", "b"])
    assert value_fingerprint({"a": 1}) != value_fingerprint({"a": "1"})
    assert value_fingerprint(Path("a/b")) != value_fingerprint("a/b")


def test_value_fingerprint_ignores_insertion_and_iteration_order() -> None:
    assert value_fingerprint({"a": 1, "b": [2, 3]}) == value_fingerprint({"b": [2, 3], "a": 1})
    assert value_fingerprint({"x", "y", "z"}) == value_fingerprint({"z", "y", "x"})
    assert value_fingerprint({1: "a", 2: "b"}) != value_fingerprint({1: "b", 2: "a"})


class Colour(enum.Enum):
    RED = 1
    GREEN = 2


@dataclasses.dataclass(frozen=True)
class Config:
    lr: float
    layers: tuple[int, ...] = (64, 64)


Point = namedtuple("Point", "x y")


class WithHook:
    def __init__(self, key: str) -> None:
        self.key = key
        self.lock = object()  # would be unencodable without the hook

    def __crystallize_fingerprint__(self) -> str:
        return self.key


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a: int, b: int) -> None:
        self.a = a
        self.b = b


def test_value_fingerprint_of_structured_values() -> None:
    assert value_fingerprint(Colour.RED) == value_fingerprint(Colour.RED)
    assert value_fingerprint(Colour.RED) != value_fingerprint(Colour.GREEN)
    assert value_fingerprint(Colour.RED) != value_fingerprint(1)
    assert value_fingerprint(Config(0.1)) == value_fingerprint(Config(0.1, (64, 64)))
    assert value_fingerprint(Config(0.1)) != value_fingerprint(Config(0.2))
    assert value_fingerprint(Point(1, 2)) != value_fingerprint((1, 2))
    assert value_fingerprint(Path("a") / "b") == value_fingerprint(PurePosixPath("a/b"))
    assert value_fingerprint(WithHook("k")) == value_fingerprint(WithHook("k"))
    assert value_fingerprint(WithHook("k")) != value_fingerprint(WithHook("j"))
    assert value_fingerprint(Slotted(1, 2)) != value_fingerprint(Slotted(1, 3))
    assert value_fingerprint(json) == value_fingerprint(json)
    assert value_fingerprint(10**5000) != value_fingerprint(10**5000 + 1)


class Stateless:
    def apply(self, x: int) -> int:
        return x


def test_instances_without_attributes_are_identified_by_their_type() -> None:
    assert value_fingerprint(Stateless()) == value_fingerprint(Stateless())
    assert value_fingerprint(Stateless()) != value_fingerprint(WithHook("k"))


def test_value_fingerprint_of_cyclic_structure_terminates() -> None:
    cycle: list[Any] = [1]
    cycle.append(cycle)
    other: list[Any] = [1]
    other.append(other)
    assert value_fingerprint(cycle) == value_fingerprint(other)
    assert value_fingerprint(cycle) != value_fingerprint([1, [1]])


def test_value_fingerprint_of_callables(project: Loader) -> None:
    module = project({"fp_steps": BASE})
    assert value_fingerprint({"fn": module.step}) == value_fingerprint({"fn": module.step})
    assert value_fingerprint(module.step) != value_fingerprint(module.helper)
    edited = project({"fp_steps": BASE.replace("THRESHOLD = 3", "THRESHOLD = 5")})
    assert value_fingerprint(module.step) != value_fingerprint(edited.step)


def test_instances_of_project_classes_include_the_class_code(project: Loader) -> None:
    source = """
    class Transform:
        def __init__(self, scale):
            self.scale = scale

        def apply(self, x):
            return x * self.scale
    """
    before = project({"fp_steps": source}).Transform(2)
    after = project({"fp_steps": source.replace("x * self.scale", "x / self.scale")}).Transform(2)
    assert value_fingerprint(before) != value_fingerprint(after)
    assert value_fingerprint(before) != value_fingerprint(type(before)(3))


def test_unfingerprintable_value_raises_helpful_type_error() -> None:
    with pytest.raises(TypeError) as caught:
        value_fingerprint({"params": [1, {"handle": threading.Lock()}]})
    message = str(caught.value)
    assert "value['params'][1]['handle']" in message
    assert "lock" in message
    assert "memory address" in message
    assert "__crystallize_fingerprint__" in message
    with pytest.raises(TypeError, match=r"value\.layers"):
        value_fingerprint(Config(lr=0.1, layers=object()))  # type: ignore[arg-type]


def test_unfingerprintable_closure_does_not_break_code_fingerprint() -> None:
    handle = threading.Lock()

    def step(x: int) -> Any:
        return handle, x

    assert code_fingerprint(step) == code_fingerprint(step)
    with pytest.raises(TypeError, match="lock"):
        value_fingerprint(functools.partial(step, threading.Lock()))


def test_value_fingerprint_of_numpy_arrays() -> None:
    import numpy
    array = numpy.arange(6, dtype=numpy.int64).reshape(2, 3)
    assert value_fingerprint(array) == value_fingerprint(array.copy())
    assert value_fingerprint(array) != value_fingerprint(array.reshape(3, 2))
    assert value_fingerprint(array) != value_fingerprint(array.astype(numpy.int32))
    assert value_fingerprint(array) == value_fingerprint(numpy.asfortranarray(array))
    assert value_fingerprint(numpy.float64(1.0)) != value_fingerprint(1.0)


def test_combine() -> None:
    assert combine("a", "b") == combine("a", "b")
    assert combine("a", "b") != combine("b", "a")
    assert combine("ab", "c") != combine("a", "bc")
    assert combine() != combine("")
    with pytest.raises(TypeError):
        combine(b"a")  # type: ignore[arg-type]


# --- properties -------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
keys = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.tuples(inner, inner),
    max_leaves=4,
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(keys, inner, max_size=4)
        | st.frozensets(keys, max_size=4)
        | st.sets(keys, max_size=4)
    ),
    max_leaves=12,
)


def typed(value: Any) -> Any:
    """A comparison key under which two values are equal exactly when they should collide."""
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(typed(item) for item in value))
    if isinstance(value, dict):
        return ("dict", frozenset((typed(key), typed(item)) for key, item in value.items()))
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, frozenset(typed(item) for item in value))
    return (type(value).__name__, value)


@given(values)
def test_property_equal_values_have_equal_fingerprints(value: Any) -> None:
    assert value_fingerprint(value) == value_fingerprint(copy.deepcopy(value))


@given(st.dictionaries(keys, values, max_size=6))
def test_property_dict_insertion_order_is_irrelevant(mapping: dict[Any, Any]) -> None:
    assert value_fingerprint(mapping) == value_fingerprint(dict(reversed(list(mapping.items()))))


@settings(max_examples=300)
@given(values, values)
def test_property_fingerprints_collide_only_for_identical_values(left: Any, right: Any) -> None:
    assert (value_fingerprint(left) == value_fingerprint(right)) == (typed(left) == typed(right))


# --- across processes -------------------------------------------------------------------------

CROSS_PROCESS_MODULE = """
import json

SEEDS = frozenset({"alpha", "beta", "gamma"})
TABLE = {"b": 2, "a": {"x", "y"}}


def helper(word):
    return word in {"alpha", "beta", "delta"}


class Scaler:
    def __init__(self, k):
        self.k = k
        self.tags = {"p", "q", "r"}

    def __call__(self, x):
        return x * self.k


def make(k):
    def inner(x):
        return helper(x) and k
    return inner


def step(x, options={"z": 1, "y": {"q", "r"}}):
    return [helper(s) for s in sorted(SEEDS)], TABLE, json.dumps(x), options
"""

GENERATED = """
def generated(x):
    return x in {"one", "two", "three"}, (lambda y: y + 1)(2)
"""

SCRIPT = """
import json
import sys

sys.path.insert(0, sys.argv[1])
import fp_cross
from crystallize.fingerprint import code_fingerprint, value_fingerprint

namespace = {}
exec(compile(sys.argv[2], "<generated>", "exec"), namespace)
print(json.dumps({
    "step": code_fingerprint(fp_cross.step),
    "closure": code_fingerprint(fp_cross.make(3)),
    "instance": code_fingerprint(fp_cross.Scaler(2)),
    "generated": code_fingerprint(namespace["generated"]),
    "value": value_fingerprint({"tags": {"x", "y", "z"}, "n": [1, 2.5, None]}),
}))
"""


def test_same_fingerprints_in_separate_processes(project: Loader, tmp_path: Path) -> None:
    directory = tmp_path / "cross"
    fp_cross = project({"fp_cross": CROSS_PROCESS_MODULE}, "fp_cross", root=directory)
    namespace: dict[str, Any] = {}
    exec(compile(GENERATED, "<generated>", "exec"), namespace)
    # The same computations as SCRIPT, in this process (whose hash seed is random).
    expected = {
        "step": code_fingerprint(fp_cross.step),
        "closure": code_fingerprint(fp_cross.make(3)),
        "instance": code_fingerprint(fp_cross.Scaler(2)),
        "generated": code_fingerprint(namespace["generated"]),
        "value": value_fingerprint({"tags": {"x", "y", "z"}, "n": [1, 2.5, None]}),
    }
    # The bytecode path is taken for exec'd code, the source path for the module.
    assert fp_cross.step.__code__.co_filename.endswith("fp_cross.py")

    package_root = Path(fingerprint_module.__file__).resolve().parents[2]
    python_path = [str(package_root), *filter(None, [os.environ.get("PYTHONPATH")])]
    outputs = []
    for seed in ("0", "1", "4242"):
        completed = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(directory), GENERATED],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=os.pathsep.join(python_path)),
            timeout=120,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        outputs.append(json.loads(completed.stdout))
    assert outputs == [expected, expected, expected]


# --- performance ------------------------------------------------------------------------------


def test_two_thousand_fingerprints_are_fast(project: Loader) -> None:
    model = project({"fp_steps": CLASSES}).Model(2)
    step = project({"fp_steps": BASE}).step
    code_fingerprint(step)
    started = time.perf_counter()
    for _ in range(1000):
        code_fingerprint(step)
        code_fingerprint(model.predict)
    # Generous: about 0.2 s on a laptop; source is read once per code object, not per call.
    assert time.perf_counter() - started < 10
