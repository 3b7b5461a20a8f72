"""What user code can read, found by reading its source (nothing is run).

Used before a run, so that a treatment key no step, datasource or verifier can read is an error
instead of a condition that silently equals the baseline, and so that a thread run whose steps
draw from a global RNG is warned about. The analysis is conservative: where code uses the
context in a way it cannot follow (passes it on, iterates it), it answers "unknown" and the
run's own record of what was read decides afterwards.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import random
import sys
from collections.abc import Callable, Iterator
from typing import Any

#: Context methods that read no key, or read the key named by their first argument.
_HARMLESS = frozenset({"record", "add", "rng", "metrics"})
_KEYED = frozenset({"get"})
#: numpy.random names that make a generator rather than draw from the global one.
_NUMPY_FACTORIES = frozenset({
    "default_rng", "Generator", "RandomState", "SeedSequence", "BitGenerator", "PCG64",
    "PCG64DXSM", "MT19937", "Philox", "SFC64",
})
_RANDOM_FACTORIES = frozenset({"Random", "SystemRandom"})


def _module_tree(filename: str) -> ast.Module | None:
    """The parsed file, or None if it cannot be read or parsed."""
    linecache.checkcache(filename)  # the file may have been edited since it was read
    lines = linecache.getlines(filename)
    if not lines:
        return None
    cached = _PARSED.get(filename)
    if cached is not None and cached[0] is lines:  # linecache reads an edited file anew
        return cached[1]
    try:
        module = ast.parse("".join(lines))
    except (SyntaxError, ValueError):
        return None  # not Python (code exec'd from another document)
    _PARSED[filename] = (lines, module)
    return module


#: Parsed files by name, with the lines (as linecache holds them) they were parsed from.
#: Parsing the whole file once is cheaper than cutting out each function's block, which
#: tokenizes it line by line; every experiment of a graph may share the same step functions.
_PARSED: dict[str, tuple[list[str], ast.Module]] = {}


def _tree(fn: Callable[..., Any]) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The parsed definition of ``fn``, or None where its source cannot be had (a lambda)."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if code is None:
        return None
    module = _module_tree(code.co_filename)
    if module is None:
        return None
    for node in ast.walk(module):
        if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.name == code.co_name
                and min([node.lineno] + [d.lineno for d in node.decorator_list])
                == code.co_firstlineno):
            return node
    return None


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _constant_str(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def context_reads(fn: Callable[..., Any], ctx_param: str | None) -> set[str] | None:
    """Keys ``fn`` reads from its context parameter ``ctx_param``; None if that is unknowable.

    Reads are ``ctx["key"]``, ``ctx.get("key")`` and ``"key" in ctx``; ``ctx.record``,
    ``ctx.add``, ``ctx.rng`` and assignments read nothing. Any other use of the context makes
    the answer unknown.
    """
    if ctx_param is None:
        return set()
    tree = _tree(fn)
    if tree is None:
        return None
    parents = _parents(tree)
    reads: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Name) and node.id == ctx_param):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Subscript) and parent.value is node:
            key = _constant_str(parent.slice)
            if isinstance(parent.ctx, ast.Store):
                continue
            if key is None:
                return None
            reads.add(key)
        elif isinstance(parent, ast.Attribute) and parent.value is node:
            if parent.attr in _HARMLESS:
                continue
            call = parents.get(parent)
            key = None
            if parent.attr in _KEYED and isinstance(call, ast.Call) and call.args:
                key = _constant_str(call.args[0])
            if key is None:
                return None
            reads.add(key)
        elif isinstance(parent, ast.Compare) and node in parent.comparators:
            key = _constant_str(parent.left)
            if key is None or not all(isinstance(op, (ast.In, ast.NotIn)) for op in parent.ops):
                return None
            reads.add(key)
        elif isinstance(node.ctx, ast.Store):
            continue
        else:
            return None
    return reads


def _attribute_chain(node: ast.AST) -> list[str] | None:
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    names.append(node.id)
    return names[::-1]


def _global_rngs() -> Iterator[Any]:
    yield getattr(random, "_inst", None)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        yield getattr(getattr(numpy.random, "mtrand", None), "_rand", None)


def _draws_globally(obj: Any, attrs: list[str]) -> bool:
    """Whether ``obj.<attrs>`` (looked up in the function's globals) is a global-RNG draw."""
    for attr in attrs:
        if obj is random and attr in _RANDOM_FACTORIES:
            return False
        if getattr(obj, "__name__", None) == "numpy.random" and attr in _NUMPY_FACTORIES:
            return False
        obj = getattr(obj, attr, None)
    if obj is random or getattr(obj, "__name__", None) == "numpy.random":
        return False  # the module itself, not a call into it
    owner = getattr(obj, "__self__", None)
    return owner is not None and any(owner is rng for rng in _global_rngs() if rng is not None)


def uses_global_rng(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` calls :mod:`random`'s or ``numpy.random``'s module-level functions."""
    fn = inspect.unwrap(fn)
    tree = _tree(fn)
    namespace = getattr(fn, "__globals__", {})
    if tree is None:
        return False
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        chain = _attribute_chain(node.func)
        if chain is None or chain[0] not in namespace:
            continue
        if _draws_globally(namespace[chain[0]], chain[1:]):
            return True
    return False
