"""Code fingerprints: a callable plus the project-local helpers and constants it reads."""

from __future__ import annotations

import ast
import contextlib
import contextvars
import functools
import inspect
import os
import sys
import threading
import types
import weakref
from collections import deque
from collections.abc import Iterator
from typing import Any, Final

from ._code import _code_info, _dump, _parse_statements
from ._encoding import (
    _MISSING,
    _hash_value,
    _is_simple,
    _object_state,
    _sha256,
    _text,
    _Unencodable,
    combine,
)
from ._locality import (
    _is_project_local,
    _module_is_local,
    _project_module,
    _qualified_name,
    _stable_name,
)
from ._values import _Encoder

#: How many calls away from the fingerprinted callable helpers are still followed.
_MAX_DEPTH: Final = 8


_BUILTIN_CALLABLES: Final = (
    types.BuiltinFunctionType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
)



_CLASS_FP: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()
_ACTIVE = threading.local()


def _active() -> set[tuple[str, int]]:
    try:
        active: set[tuple[str, int]] = _ACTIVE.keys
    except AttributeError:
        active = _ACTIVE.keys = set()
    return active


def _recursive_marker(obj: Any) -> str:
    return _sha256(b"recursive", _text(_stable_name(obj)))


def _unwrap(obj: Any) -> Any:
    """Follow ``__wrapped__`` from decorators, stopping at anything that is not a wrapper."""
    seen: set[int] = set()
    while not isinstance(obj, (type, types.MethodType, types.ModuleType)) and len(seen) < 100:
        seen.add(id(obj))
        try:
            wrapped = getattr(obj, "__wrapped__", _MISSING)
        except Exception:
            break
        if wrapped is _MISSING or id(wrapped) in seen or not callable(wrapped):
            break
        obj = wrapped
    return obj


def _function_fingerprint(fn: types.FunctionType) -> str:
    token = ("function", id(fn))
    active = _active()
    if token in active:
        # A closure that contains the function itself (a recursive inner function).
        return _recursive_marker(fn)
    active.add(token)
    try:
        extras: list[str] = []
        if fn.__defaults__:
            extras.append("defaults " + _lenient_value_fingerprint(fn.__defaults__))
        if fn.__kwdefaults__:
            extras.append("kwdefaults " + _lenient_value_fingerprint(fn.__kwdefaults__))
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
            try:
                contents = cell.cell_contents
            except ValueError:  # a cell not assigned yet
                extras.append(f"closure {name} empty")
                continue
            if name == "__class__" and isinstance(contents, type):
                # The implicit cell of super(): the class is walked as such where it matters.
                extras.append(f"closure {name} class {_stable_name(contents)}")
            else:
                extras.append(f"closure {name} " + _lenient_value_fingerprint(contents))
        own = _code_info(fn.__code__).own
        return combine(own, *extras) if extras else own
    finally:
        active.discard(token)


def _lenient_value_fingerprint(value: Any) -> str:
    return _hash_value(_Encoder(strict=False, code=code_summary).encode(value))


def _member_functions(member: Any) -> list[types.FunctionType]:
    """Return the functions behind a class attribute (method, property, staticmethod, ...)."""
    candidates: list[Any]
    if isinstance(member, (staticmethod, classmethod)):
        candidates = [member.__func__]
    elif isinstance(member, property):
        candidates = [member.fget, member.fset, member.fdel]
    elif isinstance(member, (functools.cached_property, functools.partialmethod)):
        candidates = [member.func]
    else:
        candidates = [member]
    return [
        unwrapped
        for unwrapped in (_unwrap(candidate) for candidate in candidates if candidate is not None)
        if isinstance(unwrapped, types.FunctionType)
    ]


def _class_functions(cls: type) -> list[types.FunctionType]:
    return [function for member in vars(cls).values() for function in _member_functions(member)]


def _class_fingerprint(cls: type) -> str:
    try:
        cached = _CLASS_FP.get(cls)
    except TypeError:  # a metaclass with an unusual __hash__/__eq__
        cached = None
    if cached is not None:
        return cached
    token = ("class", id(cls))
    active = _active()
    if token in active:
        return _recursive_marker(cls)
    active.add(token)
    try:
        fingerprint = _compute_class_fingerprint(cls)
    finally:
        active.discard(token)
    with contextlib.suppress(TypeError):  # a metaclass with an unusual __hash__/__eq__
        _CLASS_FP[cls] = fingerprint
    return fingerprint


def _class_source_is_trustworthy(cls: type) -> bool:
    # inspect finds the source of a class through the file of the module *now* registered
    # under its __module__, which after a reload or a same-named module is another file;
    # the methods' code objects remember where the class really came from.
    module_file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if not isinstance(module_file, str):
        return False
    expected = os.path.normcase(os.path.abspath(module_file))
    return all(
        os.path.normcase(os.path.abspath(function.__code__.co_filename)) == expected
        for function in _class_functions(cls)
        if not function.__code__.co_filename.startswith("<")  # dataclass-generated methods
    )


def _compute_class_fingerprint(cls: type) -> str:
    source: str | None = None
    if _class_source_is_trustworthy(cls):
        try:
            source = inspect.getsource(cls)
        except Exception:  # builtins, classes of "python -c" or exec, ...
            source = None
    if source is not None:
        body = _parse_statements(source)
        if body and isinstance(body[0], ast.ClassDef) and body[0].name == cls.__name__:
            body[0].decorator_list = []
            return _sha256(b"class", _text(_dump(body[0])))
    if not _is_project_local(cls):
        # Library code is a fixed dependency: its name stands for it.
        return _sha256(b"library class", _text(_qualified_name(cls)))
    chunks = [_text(cls.__qualname__)]
    chunks.extend(_text(_stable_name(base)) for base in cls.__bases__)
    for name, member in vars(cls).items():
        if name in ("__dict__", "__weakref__", "__doc__", "__module__", "__qualname__"):
            continue
        functions = _member_functions(member)
        if functions:
            kind = type(member).__qualname__  # staticmethod, property, function, ...
            for function in functions:
                chunks.append(_text(f"{name} {kind} {_function_fingerprint(function)}"))
        elif not (name.startswith("__") and name.endswith("__")):
            chunks.append(_text(f"{name} {_lenient_value_fingerprint(member)}"))
    return _sha256(b"class members", *chunks)


class _Walker:
    """Breadth-first collection of the parts of one code fingerprint."""

    def __init__(self, *, strict: bool) -> None:
        self.strict = strict
        self.parts: dict[str, str] = {}
        self._seen: set[int] = set()
        # Keeps the objects in _seen alive, so that their ids cannot be reused meanwhile.
        self._keep: list[Any] = []
        self._constant_keys: set[str] = set()
        self._queue: deque[tuple[str, Any, int, bool]] = deque()
        # The module of the fingerprinted callable; names in it are written without it.
        self._home: str | None = None

    def run(self, fn: Any) -> dict[str, str]:
        key, fingerprint = self._root(fn)
        self._add(key, fingerprint)
        while self._queue:
            key, obj, depth, is_code = self._queue.popleft()
            if not is_code:
                self._add(key, self._value_fingerprint(obj, f" (constant {key})"))
                continue
            if isinstance(obj, type):
                self._add(self._name(obj), _class_fingerprint(obj))
            else:
                self._add(self._name(obj), _function_fingerprint(obj))
            if depth < _MAX_DEPTH:
                self._expand(obj, depth)
        return self.parts

    def _key(self, module: str | None, name: str) -> str:
        # Relative to the home module, because the module a step lives in may be imported
        # under another name in the next run (``__main__``, or a file loaded by path).
        return name if module is None or module == self._home else f"{module}.{name}"

    def _name(self, obj: Any) -> str:
        qualname = getattr(obj, "__qualname__", None)
        if not isinstance(qualname, str):
            return _qualified_name(obj)
        module = getattr(obj, "__module__", None)
        return self._key(module if isinstance(module, str) else None, qualname)

    def _settle_home(self, obj: Any) -> None:
        module = getattr(obj, "__module__", None)
        if self._home is None and isinstance(module, str):
            self._home = module

    def _add(self, key: str, fingerprint: str) -> None:
        unique, counter = key, 1
        while unique in self.parts:
            if self.parts[unique] == fingerprint:
                return
            counter += 1
            unique = f"{key}#{counter}"
        self.parts[unique] = fingerprint

    def _mark(self, obj: Any) -> bool:
        """Record *obj* as visited; tell whether it was not visited before."""
        if id(obj) in self._seen:
            return False
        self._seen.add(id(obj))
        self._keep.append(obj)
        return True

    def _value_fingerprint(self, value: Any, label: str) -> str:
        try:
            return _hash_value(_Encoder(strict=self.strict, code=code_summary).encode(value))
        except _Unencodable as exc:
            exc.path.append(label)
            raise

    def _root(self, obj: Any) -> tuple[str, str]:
        obj = _unwrap(obj)
        if isinstance(obj, (staticmethod, classmethod)):
            return self._root(obj.__func__)
        if isinstance(obj, types.MethodType):
            owner = obj.__self__
            cls = owner if isinstance(owner, type) else type(owner)
            key, fingerprint = self._root(obj.__func__)
            # The rest of the class matters too: the method calls its siblings through self.
            self._consider(self._name(cls), cls, 1)
            fingerprint = combine("bound method", fingerprint, self._name(cls))
            state = None if owner is cls else _object_state(owner)
            if state and _is_simple(state):
                # Plain settings of the instance (``Pipeline(scale=2).run``) are part of what
                # the method computes; anything bigger is left out, as for module-level objects.
                fingerprint = combine(fingerprint, self._value_fingerprint(state, ".__self__"))
            return key, fingerprint
        if isinstance(obj, functools.partial):
            key, fingerprint = self._root(obj.func)
            arguments = self._value_fingerprint((obj.args, obj.keywords), ".args")
            return f"functools.partial({key})", combine("partial", fingerprint, arguments)
        if isinstance(obj, (types.FunctionType, type)):
            self._settle_home(obj)
            self._mark(obj)
            if _is_project_local(obj):
                self._expand(obj, 0)
            if isinstance(obj, type):
                return self._name(obj), _class_fingerprint(obj)
            return self._name(obj), _function_fingerprint(obj)
        if isinstance(obj, _BUILTIN_CALLABLES):
            name = _qualified_name(obj)
            fingerprint = _sha256(b"builtin", _text(name))
            owner = getattr(obj, "__self__", None)
            if owner is not None and not isinstance(owner, (types.ModuleType, type)):
                # A method of a builtin object, such as some_list.append.
                owner_state = self._value_fingerprint(owner, ".__self__")
                fingerprint = combine("builtin method", fingerprint, owner_state)
            return name, fingerprint
        if callable(obj):
            cls = type(obj)
            self._settle_home(cls)
            self._mark(cls)
            if _is_project_local(cls):
                self._expand(cls, 0)
            chunks = [_class_fingerprint(cls)]
            state = _object_state(obj)
            if state:
                chunks.append(self._value_fingerprint(state, ""))
            return f"{self._name(cls)}()", combine("instance", *chunks)
        raise TypeError(f"expected a callable, got {type(obj).__qualname__}")

    def _expand(self, obj: Any, depth: int) -> None:
        if isinstance(obj, type):
            for base in obj.__mro__[1:]:
                self._consider(self._name(base), base, depth + 1)
            functions = _class_functions(obj)
        else:
            functions = [obj]
        for function in functions:
            for module, name, reference in _references(function):
                self._consider(self._key(module, name), reference, depth + 1)

    def _consider(self, key: str, obj: Any, depth: int) -> None:
        """Queue *obj*, reached through the name *key*, if it belongs in the fingerprint."""
        if depth > _MAX_DEPTH or isinstance(obj, types.ModuleType):
            return
        obj = _unwrap(obj)
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        if isinstance(obj, types.MethodType):
            owner = obj.__self__
            self._consider(key, obj.__func__, depth)
            self._consider(key, owner if isinstance(owner, type) else type(owner), depth)
            return
        if isinstance(obj, functools.partial):
            self._consider(key, obj.func, depth)
            arguments = (obj.args, obj.keywords)
            if _is_simple(arguments) and self._new_constant(f"{key}.<partial arguments>"):
                self._queue.append((f"{key}.<partial arguments>", arguments, depth, False))
            return
        if isinstance(obj, (types.FunctionType, type)):
            if self._mark(obj) and _is_project_local(obj):
                self._queue.append((key, obj, depth, True))
            return
        if key not in self._constant_keys and _is_simple(obj):
            self._new_constant(key)
            self._queue.append((key, obj, depth, False))
            return
        # An instance, such as a module-level object whose methods the code calls: its class
        # counts, and so does its state when that is made of plain constants (``NORMALISE =
        # Normaliser(scale=2)``); other state may be large, or change as the program runs.
        cls = type(obj)
        if _is_project_local(cls):
            self._consider(self._name(cls), cls, depth)
            state = _object_state(obj)
            if state and key not in self._constant_keys and _is_simple(state):
                self._new_constant(key)
                self._queue.append((key, state, depth, False))

    def _new_constant(self, key: str) -> bool:
        if key in self._constant_keys:
            return False
        self._constant_keys.add(key)
        return True


def _references(fn: types.FunctionType) -> Iterator[tuple[str | None, str, Any]]:
    """
    Yield what *fn* reads from globals, modules and imports.

    Each item is ``(module, name, object)``: the object was found as *name* in the namespace of
    the module called *module* (``None`` for a namespace without a name, as made by exec).
    """
    info = _code_info(fn.__code__)
    namespace = fn.__globals__
    module_name = namespace.get("__name__")
    if not isinstance(module_name, str):
        module_name = fn.__module__ if isinstance(fn.__module__, str) else None
    package = namespace.get("__package__")
    if not isinstance(package, str):
        package = None
    for name, level, attributes in info.refs:
        if level < 0:
            # A global the function assigns is state, not a constant of the program.
            if name in info.stored_globals:
                continue
            obj = namespace.get(name, _MISSING)
            if obj is not _MISSING:
                yield from _follow(module_name, name, obj, attributes)
        else:
            module = _project_module(name, level, package)
            if module is not None:
                parent, _, leaf = module.__name__.rpartition(".")
                yield from _follow(parent or None, leaf, module, attributes)


def _follow(
    module: str | None, name: str, obj: Any, attributes: tuple[str, ...]
) -> Iterator[tuple[str | None, str, Any]]:
    yield module, name, obj
    for attribute in attributes:
        if not isinstance(obj, types.ModuleType) or not _module_is_local(obj):
            return
        # The module's namespace, not getattr: a lazy module __getattr__ must not run here.
        found = vars(obj).get(attribute, _MISSING)
        if found is _MISSING:
            found = _project_module(f"{obj.__name__}.{attribute}", 0, None)
            if found is None:
                return
        module, name, obj = obj.__name__, attribute, found
        yield module, name, obj


class _Known:
    """A callable's code parts computed during a :func:`snapshot`, and their summary once asked
    for (the callable is kept alive here, so that its id cannot be reused meanwhile)."""

    __slots__ = ("fn", "parts", "summary")

    def __init__(self, fn: Any, parts: dict[str, str]) -> None:
        self.fn = fn
        self.parts = parts
        self.summary: str | None = None


#: While a :func:`snapshot` is active: what is known of each callable, by ``(id, strict)``.
_SNAPSHOT: contextvars.ContextVar[dict[tuple[int, bool], _Known] | None] = (
    contextvars.ContextVar("crystallize_fingerprint_snapshot", default=None)
)


@contextlib.contextmanager
def snapshot() -> Iterator[None]:
    """
    Treat the program as unchanging for the duration of the block.

    Inside it, the code parts of each callable are computed once and then reused, instead of
    re-reading closures, defaults and module-level constants on every call. A graph run uses
    this: its 200 experiments may share one step function, and nothing is edited mid-run.
    Tasks and threads started inside the block (which copy the context) share the snapshot.
    """
    token = _SNAPSHOT.set({})
    try:
        yield
    finally:
        _SNAPSHOT.reset(token)


def _code_parts(fn: Any, *, strict: bool) -> dict[str, str]:
    if not callable(fn) and not isinstance(fn, (staticmethod, classmethod)):
        raise TypeError(f"expected a callable, got {type(fn).__qualname__}")
    memo = _SNAPSHOT.get()
    if memo is not None and (hit := memo.get((id(fn), strict))) is not None:
        return dict(hit.parts)
    token = ("parts", id(fn))
    active = _active()
    if token in active:
        return {_stable_name(fn): _recursive_marker(fn)}
    active.add(token)
    try:
        parts = _Walker(strict=strict).run(fn)
    finally:
        active.discard(token)
    if memo is not None and not active:
        # Only top-level results: a nested one may hold a recursion marker for its caller.
        memo[(id(fn), strict)] = _Known(fn, dict(parts))
    return parts


def _summarise(parts: dict[str, str]) -> str:
    items = list(parts.items())
    ordered = items[:1] + sorted(items[1:])
    return combine(*(f"{key}\x00{fingerprint}" for key, fingerprint in ordered))


def code_summary(fn: Any, strict: bool) -> str:
    """One fingerprint of everything *fn*'s code parts hold (how values encode callables)."""
    parts = _code_parts(fn, strict=strict)
    memo = _SNAPSHOT.get()
    known = memo.get((id(fn), strict)) if memo is not None else None
    if known is None:  # no snapshot, or a nested result (never kept)
        return _summarise(parts)
    if known.summary is None:  # a run asks for it once per experiment, of the same function
        known.summary = _summarise(known.parts)
    return known.summary
