"""The public functions of :mod:`crystallize.fingerprint`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._encoding import _hash_value, _Unencodable
from ._values import _Encoder
from ._walker import _code_parts, code_summary


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
        return _hash_value(_Encoder(strict=True, code=code_summary).encode(value))
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
    return code_summary(fn, False)


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
