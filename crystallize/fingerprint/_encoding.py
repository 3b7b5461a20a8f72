"""The canonical byte encoding both fingerprints are built from: framing, tags, digests."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
from pathlib import PurePath
from typing import Any, Final

#: Every digest starts with this, so that a future change of encoding cannot silently collide
#: with fingerprints written by this version.
_DOMAIN: Final = b"crystallize.fingerprint/1\x00"
_ADDRESS_RE: Final = re.compile(r" at 0x[0-9a-fA-F]+")
_MISSING: Final[Any] = object()


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
