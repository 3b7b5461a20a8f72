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

from __future__ import annotations

import ast
import contextlib
import contextvars
import dataclasses
import dis
import enum
import functools
import hashlib
import importlib
import importlib.util
import inspect
import linecache
import os
import re
import site
import sys
import sysconfig
import textwrap
import threading
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import PurePath
from typing import Any, Final

__all__ = ["code_fingerprint", "code_fingerprint_parts", "combine", "value_fingerprint"]

#: How many calls away from the fingerprinted callable helpers are still followed.
_MAX_DEPTH: Final = 8

#: Every digest starts with this, so that a future change of encoding cannot silently collide
#: with fingerprints written by this version.
_DOMAIN: Final = b"crystallize.fingerprint/1\x00"

_FRAMEWORK: Final = "crystallize"
_ADDRESS_RE: Final = re.compile(r" at 0x[0-9a-fA-F]+")
_CO_HAS_DOCSTRING: Final = 0x4000000  # Python >= 3.14 flags the docstring instead of co_consts[0]
_MISSING: Final[Any] = object()

# Opcode names vary between Python versions; unknown names are simply never seen.
_GLOBAL_LOADS: Final = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"})
_ATTR_LOADS: Final = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_LOCAL_LOADS: Final = ("LOAD_FAST", "LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_NAME", "LOAD_FROM_DICT")
_STORES: Final = frozenset({"STORE_FAST", "STORE_NAME", "STORE_DEREF", "STORE_GLOBAL"})
_STACK_SHUFFLES: Final = frozenset({"SWAP", "ROT_TWO", "POP_TOP"})
_TRANSPARENT: Final = frozenset({"EXTENDED_ARG", "NOP", "CACHE"})

_BUILTIN_CALLABLES: Final = (
    types.BuiltinFunctionType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
)

# Tags of the canonical value encoding; each is one distinct byte.
_TAG_NONE: Final = b"N"
_TAG_BOOL: Final = b"T"
_TAG_INT: Final = b"I"
_TAG_FLOAT: Final = b"F"
_TAG_COMPLEX: Final = b"J"
_TAG_STR: Final = b"S"
_TAG_BYTES: Final = b"Y"
_TAG_BYTEARRAY: Final = b"A"
_TAG_LIST: Final = b"L"
_TAG_TUPLE: Final = b"U"
_TAG_DICT: Final = b"D"
_TAG_SET: Final = b"E"
_TAG_FROZENSET: Final = b"G"
_BUILTIN_TAGS: Final[dict[type, bytes]] = {
    int: _TAG_INT,
    float: _TAG_FLOAT,
    complex: _TAG_COMPLEX,
    str: _TAG_STR,
    bytes: _TAG_BYTES,
    bytearray: _TAG_BYTEARRAY,
    list: _TAG_LIST,
    tuple: _TAG_TUPLE,
    dict: _TAG_DICT,
    set: _TAG_SET,
    frozenset: _TAG_FROZENSET,
}

#: A reference chain read by some code: ``(name, level, attributes)``. A level of -1 means
#: ``name`` is looked up in the function's globals; a level >= 0 means ``name`` is a module
#: imported inside the function with that relative-import level.
_Ref = tuple[str, int, tuple[str, ...]]


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def combine(*parts: str) -> str:
    """
    Combine several fingerprints into one.

    The result depends on the order of *parts*: ``combine(a, b) != combine(b, a)`` unless
    ``a == b``. Each part is length-prefixed, so no two different sequences of parts combine to
    the same input (``combine("ab", "c") != combine("a", "bc")``).

    :param parts: fingerprints (or any other strings) to combine
    :return: the SHA-256 hex digest of the sequence of parts
    :raises TypeError: if a part is not a :class:`str`
    """
    digest = hashlib.sha256(_DOMAIN + b"combine\x00")
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"combine() takes str parts, got {type(part).__qualname__}")
        data = _text(part)
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def value_fingerprint(value: Any) -> str:
    """
    Return the fingerprint of a parameter or payload value.

    The value is encoded canonically and the encoding is hashed:

    * ``None``, :class:`bool`, :class:`int`, :class:`float` (by :func:`repr`), :class:`complex`,
      :class:`str` and :class:`bytes` by type and value, so ``1``, ``1.0``, ``True`` and
      ``"1"`` all differ;
    * :class:`list` and :class:`tuple` element by element, tagged with their type;
    * :class:`dict` independently of insertion order; :class:`set` and :class:`frozenset`
      independently of iteration order (which for strings depends on ``PYTHONHASHSEED``);
    * :mod:`pathlib` paths as their string, enum members by class and member name, dataclass
      instances field by field;
    * callables by :func:`code_fingerprint`, with the state of callable instances and the
      arguments of :func:`functools.partial` objects encoded like any other value;
    * NumPy arrays and scalars by dtype, shape and content, if NumPy has already been imported
      (this module never imports it);
    * any object defining ``__crystallize_fingerprint__(self)`` by the encoding of the value
      that method returns;
    * any other object by its type and attributes (``__dict__`` and ``__slots__``) or, if it
      has none, by its :func:`repr` -- unless that contains a memory address.

    Instances of project-local classes also include the code fingerprint of their class, so
    editing the class changes the fingerprint of its instances; such classes are named by
    their qualified name without their module, which may be imported under another name in
    another run. Subclasses of builtin types (including named tuples) are encoded as their
    builtin value plus their type.

    :param value: the value to fingerprint
    :return: the SHA-256 hex digest of the canonical encoding of *value*
    :raises TypeError: if *value* contains an object that cannot be encoded stably, that is,
        one without attributes whose :func:`repr` contains a memory address
    """
    try:
        return _hash_value(_Encoder(strict=True).encode(value))
    except _Unencodable as exc:
        raise exc.to_type_error() from None


def code_fingerprint(fn: Callable[..., Any]) -> str:
    """
    Return the fingerprint of the code of a callable and of the project-local helpers it uses.

    This is :func:`combine` over the entries of :func:`code_fingerprint_parts`, names included,
    with the entry of *fn* itself first and the others sorted by name.

    Source code is normalised before hashing, so comments, docstrings, whitespace, line breaks,
    the position of the function in its file and the decorators applied to it do not matter,
    whereas any change of a token does. Source retrieval and parsing happen once per code
    object; closure contents, default values and module-level constants are re-read on every
    call, so rebinding or mutating them is always noticed.

    A bound method counts with its class and, when they are all plain constants, with the
    attributes of its instance; a callable instance counts with its class and its attributes
    (those that cannot be encoded stably count by their type only); a partial counts with its
    arguments.

    :param fn: a function, lambda, method, class, :func:`functools.partial`, callable instance
        or an object wrapping one of those through ``__wrapped__``
    :return: the SHA-256 hex digest of the normalised code
    :raises TypeError: if *fn* is not callable
    """
    return _summarise(_code_parts(fn, strict=False))


def code_fingerprint_parts(fn: Callable[..., Any]) -> dict[str, str]:
    """
    Return the fingerprints that make up :func:`code_fingerprint`, keyed by qualified name.

    Names are relative to the module *fn* is defined in: ``step``, ``helper`` and
    ``THRESHOLD`` for objects of that module, ``helpers.normalise`` for objects of another one.
    So the keys, like the fingerprints, do not depend on the name *fn*'s own module was
    imported under (``__main__`` in one run, ``experiment`` in the next, or a generated name
    when a file is loaded by path).

    The first entry is *fn* itself (a :func:`functools.partial` is reported as
    ``functools.partial(<name>)``, a callable instance as ``<name of its class>()``). The
    following entries are, in breadth-first order:

    * every project-local function and class *fn* references -- by a global name, by an
      attribute of a project-local module (``helpers.normalise``), or by an import inside the
      function body -- and, recursively, those they reference, up to 8 calls deep; functions
      wrapped by decorators (``functools.lru_cache``, ...) are reached through ``__wrapped__``;
    * the base classes of the classes included, the classes of bound methods, and the classes
      of module-level instances the code uses;
    * every module-level constant of a simple type (numbers, strings, bytes, ``None``, enum
      members, paths, and tuples, lists, sets, dicts and dataclass instances of those) read by
      the included code, and module-level instances whose attributes are all such constants.
      Globals the code itself assigns (``global counter``) are state, and left out.

    Code outside the project (the standard library, installed packages and ``crystallize``
    itself) is not walked. Comparing two results tells which function or constant changed.

    :param fn: any callable accepted by :func:`code_fingerprint`
    :return: a new dict mapping qualified names to SHA-256 hex digests
    :raises TypeError: if *fn* is not callable
    """
    return _code_parts(fn, strict=False)


# --------------------------------------------------------------------------------------------
# Canonical value encoding
# --------------------------------------------------------------------------------------------


class _Unencodable(Exception):
    """Raised deep inside an encoding; collects the path to the culprit while unwinding."""

    def __init__(self, type_name: str, reason: str) -> None:
        super().__init__(type_name, reason)
        self.type_name = type_name
        self.reason = reason
        self.path: list[str] = []

    def to_type_error(self) -> TypeError:
        location = "value" + "".join(reversed(self.path))
        return TypeError(
            f"cannot fingerprint {location} of type {self.type_name}: {self.reason}. "
            "A fingerprint must be identical in every process, so either give the class a "
            "__crystallize_fingerprint__(self) method returning a plain value (str, int, "
            "tuple, dict, ...) that identifies the object's content, or pass a plain value "
            "instead of the object."
        )


def _text(text: str) -> bytes:
    # surrogatepass: lone surrogates are legal in str and must not make encoding fail.
    return text.encode("utf-8", "surrogatepass")


def _frame(tag: bytes, payload: bytes) -> bytes:
    # Length-prefixing every item makes concatenations of frames uniquely decodable, which is
    # what rules out collisions such as ["ab"] versus ["a", "b"].
    return tag + len(payload).to_bytes(8, "big") + payload


def _int_bytes(number: int) -> bytes:
    # str(int) is refused above 4300 digits (sys.set_int_max_str_digits); bytes never are.
    return number.to_bytes((number.bit_length() + 8) // 8, "big", signed=True)


def _sha256(*chunks: bytes) -> str:
    digest = hashlib.sha256(_DOMAIN)
    for chunk in chunks:
        digest.update(_frame(b"|", chunk))
    return digest.hexdigest()


def _hash_value(encoded: bytes) -> str:
    return _sha256(b"value", encoded)


class _Encoder:
    """
    Canonical encoder of one value.

    In strict mode an unencodable object raises :exc:`_Unencodable`; otherwise it is encoded as
    its type name, which is what code fingerprints want for closure cells and default values
    that merely hold, say, a lock.
    """

    __slots__ = ("_stack", "_type_tokens", "strict")

    def __init__(self, *, strict: bool) -> None:
        self.strict = strict
        # ids of the containers being encoded, to turn reference cycles into back-references;
        # they never reach the output, and the objects are alive while they are on the stack.
        self._stack: list[int] = []
        self._type_tokens: dict[type, bytes] = {}

    def encode(self, value: Any) -> bytes:
        # Exact types first: this runs for every element of every payload.
        tp = type(value)
        if tp is str:
            return _frame(_TAG_STR, _text(value))
        if tp is int:
            return _frame(_TAG_INT, _int_bytes(value))
        if tp is float:
            return _frame(_TAG_FLOAT, _text(repr(value)))
        if tp is bool:
            return _frame(_TAG_BOOL, b"1" if value else b"0")
        if value is None:
            return _frame(_TAG_NONE, b"")
        if tp is list or tp is tuple:
            return self._sequence(_BUILTIN_TAGS[tp], value, value)
        if tp is dict:
            return self._mapping(_TAG_DICT, value, value.items())
        if tp is set or tp is frozenset:
            return self._set(_BUILTIN_TAGS[tp], value, value)
        if tp is bytes:
            return _frame(_TAG_BYTES, value)
        if tp is complex:
            return _frame(_TAG_COMPLEX, _text(repr(value)))
        if tp is bytearray:
            return _frame(_TAG_BYTEARRAY, bytes(value))
        return self._encode_other(value)

    def _enter(self, container: object) -> bytes | None:
        key = id(container)
        if key in self._stack:
            return _frame(b"R", _int_bytes(len(self._stack) - self._stack.index(key)))
        self._stack.append(key)
        return None

    def _sequence(self, tag: bytes, container: object, items: Iterable[Any]) -> bytes:
        backref = self._enter(container)
        if backref is not None:
            return backref
        try:
            chunks: list[bytes] = []
            append = chunks.append
            for index, item in enumerate(items):
                # Inlined copies of encode() for the commonest scalars: long lists of numbers
                # are the bulk of most payloads, and a call per element doubles their cost.
                item_type = type(item)
                if item_type is float:
                    data = repr(item).encode()
                    append(_TAG_FLOAT + len(data).to_bytes(8, "big") + data)
                elif item_type is int:
                    data = _int_bytes(item)
                    append(_TAG_INT + len(data).to_bytes(8, "big") + data)
                elif item_type is str:
                    data = item.encode("utf-8", "surrogatepass")
                    append(_TAG_STR + len(data).to_bytes(8, "big") + data)
                else:
                    try:
                        append(self.encode(item))
                    except _Unencodable as exc:
                        exc.path.append(f"[{index}]")
                        raise
            return _frame(tag, b"".join(chunks))
        finally:
            self._stack.pop()

    def _mapping(
        self,
        tag: bytes,
        container: object,
        pairs: Iterable[tuple[Any, Any]],
        *,
        prefix: bytes = b"",
        attributes: bool = False,
    ) -> bytes:
        backref = self._enter(container)
        if backref is not None:
            return backref
        try:
            entries: list[bytes] = []
            for key, item in pairs:
                try:
                    entries.append(self.encode(key) + self.encode(item))
                except _Unencodable as exc:
                    exc.path.append(f".{key}" if attributes else f"[{_short_repr(key)}]")
                    raise
            # Keys are unique, so sorting the (self-delimiting) entries orders them by key.
            entries.sort()
            return _frame(tag, prefix + b"".join(entries))
        finally:
            self._stack.pop()

    def _set(self, tag: bytes, container: object, items: Iterable[Any]) -> bytes:
        backref = self._enter(container)
        if backref is not None:
            return backref
        try:
            chunks: list[bytes] = []
            for item in items:
                try:
                    chunks.append(self.encode(item))
                except _Unencodable as exc:
                    exc.path.append("{...}")
                    raise
            chunks.sort()
            return _frame(tag, b"".join(chunks))
        finally:
            self._stack.pop()

    def _type_token(self, tp: type) -> bytes:
        token = self._type_tokens.get(tp)
        if token is None:
            token = _frame(_TAG_STR, _text(_stable_name(tp)))
            if _is_project_local(tp):
                # Parameters are often instances of the project's own classes, whose methods
                # the step calls through the parameter: their code must count too.
                token += _frame(b"c", _text(_summarise(_code_parts(tp, strict=self.strict))))
            self._type_tokens[tp] = token
        return token

    def _unencodable(self, value: Any, reason: str) -> bytes:
        type_name = _qualified_name(type(value))
        if self.strict:
            raise _Unencodable(type_name, reason)
        return _frame(b"?", _text(type_name))

    def _encode_other(self, value: Any) -> bytes:
        tp = type(value)
        if not isinstance(value, type) and hasattr(tp, "__crystallize_fingerprint__"):
            return self._encode_hook(value)
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            encoded = self._encode_numpy(value, numpy)
            if encoded is not None:
                return encoded
        if isinstance(value, enum.Enum):
            name = value.name if value.name is not None else repr(value.value)
            return _frame(b"M", _frame(_TAG_STR, _text(_stable_name(tp))) + _text(name))
        for base, tag in _BUILTIN_TAGS.items():
            if isinstance(value, base):
                return _frame(b"Q", self._type_token(tp) + self._encode_as(value, base, tag))
        if isinstance(value, PurePath):
            return _frame(b"P", _text(str(value)))
        if isinstance(value, types.ModuleType):
            return _frame(b"m", _text(value.__name__))
        if callable(value):
            return _frame(b"C", _text(_summarise(_code_parts(value, strict=self.strict))))
        if dataclasses.is_dataclass(value):
            return self._encode_dataclass(value)
        return self._encode_object(value)

    def _encode_hook(self, value: Any) -> bytes:
        backref = self._enter(value)
        if backref is not None:
            return backref
        try:
            try:
                identity = value.__crystallize_fingerprint__()
                encoded = self.encode(identity)
            except _Unencodable as exc:
                exc.path.append(".__crystallize_fingerprint__()")
                raise
            # The type name only: whoever wrote the hook decided what identifies the object.
            name = _frame(_TAG_STR, _text(_stable_name(type(value))))
            return _frame(b"O", name + encoded)
        finally:
            self._stack.pop()

    def _encode_numpy(self, value: Any, numpy: Any) -> bytes | None:
        if isinstance(value, numpy.ndarray):
            dtype = value.dtype
            header = _frame(_TAG_STR, _text(repr(dtype.descr))) + _frame(
                _TAG_STR, _text(repr(tuple(value.shape)))
            )
            if dtype.hasobject:
                # tobytes() of an object array would be a list of pointers.
                return _frame(b"X", header + self.encode(value.tolist()))
            contiguous = numpy.ascontiguousarray(value)
            try:
                digest = hashlib.sha256(memoryview(contiguous).cast("B")).digest()
            except (TypeError, ValueError):
                # Some dtypes (datetime64, ...) do not export a buffer.
                digest = hashlib.sha256(contiguous.tobytes()).digest()
            return _frame(b"X", header + digest)
        if isinstance(value, numpy.generic):
            descr = _text(repr(value.dtype.descr))
            return _frame(b"Z", _frame(_TAG_STR, descr) + value.tobytes())
        return None

    def _encode_as(self, value: Any, base: type, tag: bytes) -> bytes:
        # Unbound base-class methods read the underlying builtin value, so that overridden
        # __str__, __iter__ or items() on the subclass cannot change the encoding.
        if base is int:
            return _frame(tag, _int_bytes(int.__index__(value)))
        if base is float:
            return _frame(tag, _text(float.__repr__(value)))
        if base is complex:
            return _frame(tag, _text(complex.__repr__(value)))
        if base is str:
            return _frame(tag, str.encode(value, "utf-8", "surrogatepass"))
        if base is bytes or base is bytearray:
            return _frame(tag, bytes(memoryview(value)))
        if base is dict:
            return self._mapping(tag, value, dict.items(value))
        if base is set or base is frozenset:
            return self._set(tag, value, base.__iter__(value))
        return self._sequence(tag, value, base.__iter__(value))

    def _encode_dataclass(self, value: Any) -> bytes:
        backref = self._enter(value)
        if backref is not None:
            return backref
        try:
            chunks = [self._type_token(type(value))]
            for field in dataclasses.fields(value):
                item = getattr(value, field.name, _MISSING)
                try:
                    encoded = _frame(b"-", b"") if item is _MISSING else self.encode(item)
                except _Unencodable as exc:
                    exc.path.append(f".{field.name}")
                    raise
                chunks.append(_frame(_TAG_STR, _text(field.name)) + encoded)
            return _frame(b"K", b"".join(chunks))
        finally:
            self._stack.pop()

    def _encode_object(self, value: Any) -> bytes:
        tp = type(value)
        state = _object_state(value)
        if state:
            return self._mapping(
                b"W", value, state.items(), prefix=self._type_token(tp), attributes=True
            )
        try:
            text: str | None = repr(value)
        except Exception:  # a broken __repr__ is the object's problem, not an encoding bug
            text = None
        if text is not None and _ADDRESS_RE.search(text) is None:
            return _frame(b"r", self._type_token(tp) + _frame(_TAG_STR, _text(text)))
        if state is not None:
            # An instance without any attribute: its type is all there is to it.
            return _frame(b"W", self._type_token(tp))
        return self._unencodable(
            value, "it has no attributes and its repr() contains a memory address"
        )


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__qualname__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def _object_state(value: Any) -> dict[str, Any] | None:
    """Return the attributes of *value* (``__dict__`` and slots), or ``None`` if it has none."""
    state: dict[str, Any] | None = None
    try:
        instance_dict = object.__getattribute__(value, "__dict__")
    except AttributeError:
        instance_dict = None
    if isinstance(instance_dict, dict):
        state = dict(instance_dict)
    for cls in type(value).__mro__:
        slots = cls.__dict__.get("__slots__")
        if slots is None:
            continue
        if state is None:
            state = {}
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot in ("__dict__", "__weakref__"):
                continue
            if slot.startswith("__") and not slot.endswith("__"):
                slot = f"_{cls.__name__.lstrip('_')}{slot}"
            item = getattr(value, slot, _MISSING)
            if item is not _MISSING:
                state.setdefault(slot, item)
    return state


def _is_simple(value: Any, depth: int = 0) -> bool:
    """Tell whether *value* is a plain constant (scalars and containers of scalars)."""
    if depth > 32:
        return False
    tp = type(value)
    if value is None or tp in (bool, int, float, complex, str, bytes):
        return True
    if tp in (tuple, list, set, frozenset):
        return all(_is_simple(item, depth + 1) for item in value)
    if tp is dict:
        return all(
            _is_simple(key, depth + 1) and _is_simple(item, depth + 1)
            for key, item in value.items()
        )
    if isinstance(value, (enum.Enum, PurePath)):
        return True
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return all(
            _is_simple(getattr(value, field.name, None), depth + 1)
            for field in dataclasses.fields(value)
        )
    return False


# --------------------------------------------------------------------------------------------
# Where code lives
# --------------------------------------------------------------------------------------------


def _is_framework(module_name: str) -> bool:
    return module_name == _FRAMEWORK or module_name.startswith(_FRAMEWORK + ".")


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    candidates: set[str] = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            candidates.add(path)
    candidates.add(os.path.dirname(os.__file__))
    for getter in ("getsitepackages", "getusersitepackages"):
        try:
            found = getattr(site, getter)()
        except (AttributeError, OSError):
            continue
        candidates.update([found] if isinstance(found, str) else found)
    # The library directories of each prefix, not the prefixes themselves: with a system
    # Python the prefix is /usr, and a project under /usr/src is still the user's code.
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        for sub in ("lib", "lib64", "Lib", "DLLs"):
            candidates.add(os.path.join(prefix, sub))
    return tuple(sorted({os.path.normcase(os.path.realpath(path)) for path in candidates}))


@functools.lru_cache(maxsize=8192)
def _path_is_local(path: str) -> bool:
    """Tell whether the source file *path* belongs to the project rather than a library."""
    if path.startswith("<"):
        # "<string>", "<stdin>", "<ipython-input-...>": code typed or generated by the user.
        return not path.startswith("<frozen")
    normalised = os.path.normcase(os.path.realpath(path))
    components = normalised.split(os.sep)
    if "site-packages" in components or "dist-packages" in components:
        return False
    return not any(
        normalised == root or normalised.startswith(root.rstrip(os.sep) + os.sep)
        for root in _library_roots()
    )


_MODULE_LOCALITY: dict[tuple[str, str | None], bool] = {}


def _module_is_local(module: types.ModuleType) -> bool:
    name = getattr(module, "__name__", None)
    name = name if isinstance(name, str) else ""
    file = getattr(module, "__file__", None)
    file = file if isinstance(file, str) and file else None
    key = (name, file)
    cached = _MODULE_LOCALITY.get(key)
    if cached is not None:
        return cached
    if _is_framework(name):
        result = False
    elif file is not None:
        result = _path_is_local(file)
    elif name.partition(".")[0] in sys.stdlib_module_names or name in sys.builtin_module_names:
        result = False
    else:
        try:
            locations = list(getattr(module, "__path__", None) or [])
        except TypeError:
            locations = []
        # No file and no path: __main__ of "python -c", a notebook, or a module built at
        # runtime -- code of the user either way.
        result = all(_path_is_local(str(location)) for location in locations)
    _MODULE_LOCALITY[key] = result
    return result


def _is_project_local(obj: Any) -> bool:
    """Tell whether the function or class *obj* is the project's code (to be walked)."""
    module_name = getattr(obj, "__module__", None)
    if isinstance(module_name, str):
        if _is_framework(module_name):
            return False
        module = sys.modules.get(module_name)
        if module is not None:
            if not _module_is_local(module):
                return False
        elif module_name.partition(".")[0] in sys.stdlib_module_names:
            return False
    code = getattr(obj, "__code__", None)
    if isinstance(code, types.CodeType):
        return _path_is_local(code.co_filename)
    return True


def _project_module(name: str, level: int, package: str | None) -> types.ModuleType | None:
    """Return the project-local module a function imports, importing it if need be."""
    try:
        absolute = importlib.util.resolve_name("." * level + name, package) if level else name
    except (ImportError, ValueError, TypeError, AttributeError):
        return None
    if not absolute:
        return None
    module = sys.modules.get(absolute)
    if module is None:
        top = absolute.partition(".")[0]
        if _is_framework(absolute) or top in sys.stdlib_module_names:
            return None
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        if spec.has_location and spec.origin:
            locations = [spec.origin]
        else:
            locations = list(spec.submodule_search_locations or [])
        # Only the project's own modules are imported here -- the function imports them itself
        # when it runs -- so that the fingerprint does not depend on what happens to have been
        # imported already. Libraries are never walked, so they need not be imported.
        if not locations or not all(_path_is_local(str(path)) for path in locations):
            return None
        try:
            module = importlib.import_module(absolute)
        except Exception:
            return None
    return module if _module_is_local(module) else None


# --------------------------------------------------------------------------------------------
# Code objects
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _CodeInfo:
    filename: str
    own: str  # fingerprint of the normalised source, or of the bytecode
    refs: tuple[_Ref, ...]
    stored_globals: frozenset[str]


# Keyed by code object: getsource and parsing are the expensive part and depend on nothing
# else. Code objects compare by content, so the filename is checked on every hit.
_CODE_INFO: weakref.WeakKeyDictionary[types.CodeType, _CodeInfo] = weakref.WeakKeyDictionary()
_CLASS_FP: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()
_ACTIVE = threading.local()


def _code_info(code: types.CodeType) -> _CodeInfo:
    info = _CODE_INFO.get(code)
    if info is not None and info.filename == code.co_filename:
        return info
    refs, stored = _analyse_references(code)
    info = _CodeInfo(code.co_filename, _own_code_fingerprint(code), refs, stored)
    _CODE_INFO[code] = info
    return info


def _walk_code(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _walk_code(const)


def _source_of(code: types.CodeType) -> str:
    # inspect.getsource first maps the code to its module by scanning sys.modules, which costs
    # ~10 ms per call in a big program; the file's lines and the first line number suffice.
    linecache.checkcache(code.co_filename)  # the file may have been edited since it was read
    lines = linecache.getlines(code.co_filename)
    if lines and 0 < code.co_firstlineno <= len(lines):
        return "".join(inspect.getblock(lines[code.co_firstlineno - 1:]))
    return inspect.getsource(code)  # slower, but also finds sources registered by loaders


def _own_code_fingerprint(code: types.CodeType) -> str:
    try:
        source = _source_of(code)
    except Exception:  # OSError, TypeError, or tokenizer errors on a file edited since import
        return _bytecode_fingerprint(code)
    dumped = _source_dump(source, code)
    if dumped is None:
        return _bytecode_fingerprint(code)
    return _sha256(b"ast", _text(dumped))


def _parse_statements(source: str) -> list[ast.stmt] | None:
    try:
        return ast.parse(textwrap.dedent(source)).body
    except (SyntaxError, ValueError):
        pass
    # dedent gives up when a multi-line string inside is less indented than the code; the
    # source then still parses as the body of a block.
    try:
        block = ast.parse("if 1:\n" + source).body[0]
    except (SyntaxError, ValueError):
        return None
    return block.body if isinstance(block, ast.If) else None


def _dump(node: ast.AST) -> str:
    for child in ast.walk(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = child.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                child.body = body[1:]
    return ast.dump(node, annotate_fields=True, include_attributes=False)


def _code_argument_names(code: types.CodeType) -> tuple[str, ...]:
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)
    return code.co_varnames[:count]


def _lambda_argument_names(node: ast.Lambda) -> tuple[str, ...]:
    arguments = node.args
    names = [arg.arg for arg in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)]
    if arguments.vararg is not None:
        names.append(arguments.vararg.arg)
    if arguments.kwarg is not None:
        names.append(arguments.kwarg.arg)
    return tuple(names)


def _source_dump(source: str, code: types.CodeType) -> str | None:
    body = _parse_statements(source)
    if not body:
        return None
    if code.co_name == "<lambda>":
        # getsource returns whole lines; the lambda is the one whose parameters match. If
        # several differing candidates remain, only the bytecode can tell them apart.
        expected = _code_argument_names(code)
        dumps = {
            _dump(node)
            for statement in body
            for node in ast.walk(statement)
            if isinstance(node, ast.Lambda) and _lambda_argument_names(node) == expected
        }
        return dumps.pop() if len(dumps) == 1 else None
    node = body[0]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == code.co_name:
        node.decorator_list = []
        return _dump(node)
    # The file changed since the code was compiled, or getsource found something else.
    return None


def _has_docstring(code: types.CodeType) -> bool:
    if sys.version_info >= (3, 14):
        return bool(code.co_flags & _CO_HAS_DOCSTRING)
    # Before 3.14 the first constant of a function is its docstring, or None if it has none.
    # Lambdas and comprehensions (named "<...>") have no docstring, and class bodies (not
    # CO_OPTIMIZED) start with their qualified name instead.
    return (
        bool(code.co_flags & inspect.CO_OPTIMIZED)
        and not code.co_name.startswith("<")
        and bool(code.co_consts)
        and isinstance(code.co_consts[0], str)
    )


def _encode_code(code: types.CodeType) -> bytes:
    consts = code.co_consts[1:] if _has_docstring(code) else code.co_consts
    encoder = _Encoder(strict=False)
    encoded_consts = b"".join(
        _frame(b"c", _encode_code(const))
        if isinstance(const, types.CodeType)
        else encoder.encode(const)
        for const in consts
    )
    return b"".join(
        (
            _frame(_TAG_STR, _text(code.co_name)),
            _frame(_TAG_BYTES, code.co_code),
            _frame(_TAG_INT, _int_bytes(code.co_argcount)),
            _frame(_TAG_INT, _int_bytes(code.co_posonlyargcount)),
            _frame(_TAG_INT, _int_bytes(code.co_kwonlyargcount)),
            _frame(_TAG_TUPLE, encoded_consts),
            encoder.encode(code.co_names),
            encoder.encode(code.co_varnames),
            encoder.encode(code.co_freevars),
            encoder.encode(code.co_cellvars),
        )
    )


def _bytecode_fingerprint(code: types.CodeType) -> str:
    # Bytecode differs between Python versions, so the version is part of the digest.
    version = sys.implementation.cache_tag or sys.version
    return _sha256(b"bytecode", _text(version), _encode_code(code))


def _analyse_references(code: types.CodeType) -> tuple[tuple[_Ref, ...], frozenset[str]]:
    """Find the global names, attribute chains and imports read by *code* and nested code."""
    listings = [list(dis.get_instructions(nested)) for nested in _walk_code(code)]
    aliases: dict[str, _Ref] = {}
    refs: dict[_Ref, None] = {}  # an ordered set
    stored: set[str] = set()
    for instructions in listings:
        for index, instruction in enumerate(instructions):
            if instruction.opname in ("STORE_GLOBAL", "DELETE_GLOBAL"):
                stored.add(instruction.argval)
            elif instruction.opname == "IMPORT_NAME" and isinstance(instruction.argval, str):
                _record_import(instructions, index, aliases, refs)
    for instructions in listings:
        chain: tuple[str, int, list[str]] | None = None
        for instruction in instructions:
            opname, argval = instruction.opname, instruction.argval
            if opname in _TRANSPARENT:
                continue
            if chain is not None and opname in _ATTR_LOADS and isinstance(argval, str):
                chain[2].append(argval)
                continue
            if chain is not None:
                refs[(chain[0], chain[1], tuple(chain[2]))] = None
                chain = None
            if not isinstance(argval, str):
                continue
            if argval in aliases and opname.startswith(_LOCAL_LOADS):
                name, level, attributes = aliases[argval]
                chain = (name, level, list(attributes))
            elif opname in _GLOBAL_LOADS:
                chain = (argval, -1, [])
        if chain is not None:
            refs[(chain[0], chain[1], tuple(chain[2]))] = None
    return tuple(refs), frozenset(stored)


def _record_import(
    instructions: list[dis.Instruction],
    index: int,
    aliases: dict[str, _Ref],
    refs: dict[_Ref, None],
) -> None:
    name: str = instructions[index].argval
    level = 0
    fromlist: Any = None
    if index >= 1 and instructions[index - 1].opname == "LOAD_CONST":
        fromlist = instructions[index - 1].argval
    if index >= 2 and instructions[index - 2].opname in ("LOAD_CONST", "LOAD_SMALL_INT"):
        candidate = instructions[index - 2].argval
        level = candidate if type(candidate) is int else 0
    if fromlist is None:
        # "import a.b" binds the top-level package; "import a.b as c" reaches a.b through
        # IMPORT_FROM steps on it.
        top = name.partition(".")[0]
        attributes: list[str] = []
        for instruction in instructions[index + 1 :]:
            if instruction.opname == "IMPORT_FROM":
                attributes.append(instruction.argval)
            elif instruction.opname in _STORES:
                aliases[instruction.argval] = (top, level, tuple(attributes))
                return
            elif instruction.opname not in _STACK_SHUFFLES | _TRANSPARENT:
                return
        return
    position = index + 1
    while position < len(instructions) and instructions[position].opname == "IMPORT_FROM":
        ref: _Ref = (name, level, (instructions[position].argval,))
        refs[ref] = None
        following = instructions[position + 1] if position + 1 < len(instructions) else None
        if following is not None and following.opname in _STORES:
            aliases[following.argval] = ref
            position += 2
        else:
            position += 1


# --------------------------------------------------------------------------------------------
# Callables
# --------------------------------------------------------------------------------------------


def _qualified_name(obj: Any) -> str:
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = getattr(obj, "__name__", None)
    if not isinstance(qualname, str):
        qualname = type(obj).__qualname__
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        module = getattr(getattr(obj, "__objclass__", None), "__module__", None)
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def _stable_name(obj: Any) -> str:
    """
    Name *obj* independently of the name its module was imported under, if it is the project's.

    The same file may be ``__main__`` in one run and ``experiment`` in the next, or be loaded
    by path under a generated name; the code fingerprint of a project-local object identifies
    it better than its module name. Library objects keep their full name.
    """
    if _is_project_local(obj):
        qualname = getattr(obj, "__qualname__", None)
        if isinstance(qualname, str):
            return qualname
    return _qualified_name(obj)


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
    return _hash_value(_Encoder(strict=False).encode(value))


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
            return _hash_value(_Encoder(strict=self.strict).encode(value))
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
                state = self._value_fingerprint(owner, ".__self__")
                fingerprint = combine("builtin method", fingerprint, state)
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


#: While a :func:`snapshot` is active: code parts already computed, by ``(id, strict)`` of the
#: callable (kept alive next to its parts, so that the id cannot be reused meanwhile).
_SNAPSHOT: contextvars.ContextVar[dict[tuple[int, bool], tuple[Any, dict[str, str]]] | None] = (
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
        return dict(hit[1])
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
        memo[(id(fn), strict)] = (fn, dict(parts))
    return parts


def _summarise(parts: dict[str, str]) -> str:
    items = list(parts.items())
    ordered = items[:1] + sorted(items[1:])
    return combine(*(f"{key}\x00{fingerprint}" for key, fingerprint in ordered))
