"""Canonical encoding of values: parameters, payloads, closure cells and defaults."""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import threading
import types
from collections.abc import Callable, Iterable
from pathlib import PurePath
from typing import Any, Final, cast

from ._encoding import (
    _ADDRESS_RE,
    _BUILTIN_TAGS,
    _MISSING,
    _TAG_BOOL,
    _TAG_BYTEARRAY,
    _TAG_BYTES,
    _TAG_COMPLEX,
    _TAG_DICT,
    _TAG_FLOAT,
    _TAG_INT,
    _TAG_NONE,
    _TAG_STR,
    _frame,
    _int_bytes,
    _object_state,
    _short_repr,
    _text,
    _Unencodable,
)
from ._locality import _is_project_local, _qualified_name, _stable_name

#: The code fingerprint of a callable or class, strict or lenient (see :class:`_Encoder`).
CodeSummary = Callable[[Any, bool], str]


class _Encoder:
    """
    Canonical encoder of one value.

    In strict mode an unencodable object raises :exc:`_Unencodable`; otherwise it is encoded as
    its type name, which is what code fingerprints want for closure cells and default values
    that merely hold, say, a lock.
    """

    __slots__ = ("_code", "_stack", "_type_tokens", "strict")

    def __init__(self, *, strict: bool, code: CodeSummary | None) -> None:
        self.strict = strict
        # Callables and project-local classes are encoded by their code fingerprint, which the
        # walker above this module computes; None only for the constants of code objects,
        # which never hold either.
        self._code = code
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
                token += _frame(b"c", _text(self._code_summary(tp)))
            self._type_tokens[tp] = token
        return token

    def _code_summary(self, obj: Any) -> str:
        if self._code is None:
            raise AssertionError(f"{type(obj).__qualname__} reached an encoder without code")
        return self._code(obj, self.strict)

    def _unencodable(self, value: Any, reason: str) -> bytes:
        type_name = _qualified_name(type(value))
        if self.strict:
            raise _Unencodable(type_name, reason)
        return _frame(b"?", _text(type_name))

    def _encode_other(self, value: Any) -> bytes:
        tp = type(value)
        if not isinstance(value, type) and hasattr(tp, "__crystallize_fingerprint__"):
            return self._encode_hook(value)
        encoded = encode_extension(value, self)
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
            return _frame(b"C", _text(self._code_summary(value)))
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
        unbound_iter: Callable[[Any], Iterable[Any]] = cast(Any, base).__iter__
        if base is set or base is frozenset:
            return self._set(tag, value, unbound_iter(value))
        return self._sequence(tag, value, unbound_iter(value))

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


# --------------------------------------------------------------------------------------------
# Types of other libraries
# --------------------------------------------------------------------------------------------


@functools.singledispatch
def encode_extension(value: Any, encoder: _Encoder) -> bytes | None:
    """The encoding of a value of another library's type, or None if no rule covers its type.

    Rules are registered per type with ``encode_extension.register``, as dask's
    ``normalize_token`` does; a library's rules are registered the first time one of its
    values is seen (see :data:`_LAZY`), so this module never imports the library itself.
    """
    tp = type(value)
    libraries = {cls.__module__.partition(".")[0] for cls in tp.__mro__}.intersection(_LAZY)
    if not libraries:
        return None
    with _LAZY_LOCK:
        for library in libraries - _REGISTERED:
            _LAZY[library]()
            _REGISTERED.add(library)
    impl = encode_extension.dispatch(tp)
    return None if impl is _unregistered else impl(value, encoder)


_unregistered = encode_extension.dispatch(object)


def _register_numpy() -> None:
    import numpy

    @encode_extension.register(numpy.ndarray)
    def _array(value: Any, encoder: _Encoder) -> bytes:
        dtype = value.dtype
        header = _frame(_TAG_STR, _text(repr(dtype.descr))) + _frame(
            _TAG_STR, _text(repr(tuple(value.shape)))
        )
        if dtype.hasobject:
            # tobytes() of an object array would be a list of pointers.
            return _frame(b"X", header + encoder.encode(value.tolist()))
        contiguous = numpy.ascontiguousarray(value)
        try:
            # cast: NumPy's stubs declare the buffer protocol only on Python >= 3.12.
            digest = hashlib.sha256(memoryview(cast(Any, contiguous)).cast("B")).digest()
        except (TypeError, ValueError):
            # Some dtypes (datetime64, ...) do not export a buffer.
            digest = hashlib.sha256(contiguous.tobytes()).digest()
        return _frame(b"X", header + digest)

    @encode_extension.register(numpy.generic)
    def _scalar(value: Any, encoder: _Encoder) -> bytes:
        descr = _text(repr(value.dtype.descr))
        return _frame(b"Z", _frame(_TAG_STR, descr) + value.tobytes())


#: Top-level module name -> the function registering the rules for that library's types, run
#: once, when the first value of one of them is seen (so the library is imported by then).
_LAZY: Final[dict[str, Callable[[], None]]] = {"numpy": _register_numpy}
_REGISTERED: set[str] = set()
_LAZY_LOCK = threading.Lock()
