"""Code objects: their normalised source (or bytecode) and the names they read."""

from __future__ import annotations

import ast
import dataclasses
import dis
import inspect
import linecache
import os
import sys
import textwrap
import threading
import types
import weakref
from collections.abc import Iterator
from typing import Any, Final

from .._version import __version__
from ._encoding import (
    _DOMAIN,
    _TAG_BYTES,
    _TAG_INT,
    _TAG_STR,
    _TAG_TUPLE,
    _frame,
    _int_bytes,
    _sha256,
    _text,
)
from ._values import _Encoder

_CO_HAS_DOCSTRING: Final = 0x4000000  # Python >= 3.14 flags the docstring instead of co_consts[0]

# Opcode names vary between Python versions; unknown names are simply never seen.
_GLOBAL_LOADS: Final = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"})
_ATTR_LOADS: Final = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_LOCAL_LOADS: Final = ("LOAD_FAST", "LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_NAME", "LOAD_FROM_DICT")
_STORES: Final = frozenset({"STORE_FAST", "STORE_NAME", "STORE_DEREF", "STORE_GLOBAL"})
_STACK_SHUFFLES: Final = frozenset({"SWAP", "ROT_TWO", "POP_TOP"})
_TRANSPARENT: Final = frozenset({"EXTENDED_ARG", "NOP", "CACHE"})

#: A reference chain read by some code: ``(name, level, attributes)``. A level of -1 means
#: ``name`` is looked up in the function's globals; a level >= 0 means ``name`` is a module
#: imported inside the function with that relative-import level.
_Ref = tuple[str, int, tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class _CodeInfo:
    filename: str
    own: str  # fingerprint of the normalised source, or of the bytecode
    refs: tuple[_Ref, ...]
    stored_globals: frozenset[str]


# Keyed by code object: getsource and parsing are the expensive part and depend on nothing
# else. Code objects compare by content, so the filename is checked on every hit.
_CODE_INFO: weakref.WeakKeyDictionary[types.CodeType, _CodeInfo] = weakref.WeakKeyDictionary()


def _code_info(code: types.CodeType) -> _CodeInfo:
    info = _CODE_INFO.get(code)
    if info is not None and info.filename == code.co_filename:
        return info
    identity = _file_identity(code.co_filename)
    key = _known_key(code) if identity is not None else ""
    info = _known_info(code.co_filename, identity, key)
    if info is None:
        refs, stored = _analyse_references(code)
        info = _CodeInfo(code.co_filename, _own_code_fingerprint(code), refs, stored)
        if identity is not None:
            _remember(identity, key, info, added=True)
    _CODE_INFO[code] = info
    return info


# Code facts of earlier runs (read from and written to the store by the running layer), by
# source file: {path: (size, mtime_ns, {code key: info})}. Parsing the source of every step
# function is most of what a resume costs; an unchanged file needs no second parse.
_KNOWN: dict[str, tuple[int, int, dict[str, _CodeInfo]]] = {}
_KNOWN_LOCK = threading.Lock()
_known_added = False
# Facts computed by another version of this module may be computed differently.
_KNOWN_SCHEMA: Final = f"{__version__} {_DOMAIN[:-1].decode()}"


def _file_identity(filename: str) -> tuple[int, int] | None:
    if filename.startswith("<"):
        return None
    try:
        stat = os.stat(filename)
    except (OSError, ValueError):
        return None
    return stat.st_size, stat.st_mtime_ns


def _known_key(code: types.CodeType) -> str:
    # The bytecode digest, not the line alone: a module imported before its file was edited
    # runs old code under the new file's identity, and what it reads comes from that code.
    name = getattr(code, "co_qualname", code.co_name)
    return f"{code.co_firstlineno}:{name}:{_bytecode_fingerprint(code)}"


def _known_info(filename: str, identity: tuple[int, int] | None, key: str) -> _CodeInfo | None:
    if identity is None:
        return None
    with _KNOWN_LOCK:
        entry = _KNOWN.get(filename)
    if entry is None or entry[:2] != identity:
        return None
    return entry[2].get(key)


def _remember(identity: tuple[int, int], key: str, info: _CodeInfo, *, added: bool) -> None:
    global _known_added
    with _KNOWN_LOCK:
        entry = _KNOWN.get(info.filename)
        if entry is None or entry[:2] != identity:
            entry = _KNOWN[info.filename] = (*identity, {})
        entry[2].setdefault(key, info)
        _known_added = _known_added or added


def _json_info(filename: str, raw: Any) -> _CodeInfo | None:
    if not isinstance(raw, dict):
        return None
    own, refs, stored = raw.get("own"), raw.get("refs"), raw.get("stored")
    if not (isinstance(own, str) and isinstance(refs, list) and isinstance(stored, list)
            and all(isinstance(name, str) for name in stored)):
        return None
    parsed: list[_Ref] = []
    for ref in refs:
        if not (isinstance(ref, list) and len(ref) == 3 and isinstance(ref[0], str)
                and type(ref[1]) is int and isinstance(ref[2], list)
                and all(isinstance(attribute, str) for attribute in ref[2])):
            return None
        parsed.append((ref[0], ref[1], tuple(ref[2])))
    return _CodeInfo(filename, own, tuple(parsed), frozenset(stored))


def load_known_code(document: Any) -> None:
    """Take the code facts of ``document`` (as made by :func:`known_code`) for files unchanged
    since; anything malformed in it is skipped: it is a cache, recomputed when missing."""
    if not isinstance(document, dict) or document.get("schema") != _KNOWN_SCHEMA:
        return
    files = document.get("files")
    for filename, entry in files.items() if isinstance(files, dict) else ():
        codes = entry.get("codes") if isinstance(entry, dict) else None
        identity = _file_identity(filename) if isinstance(filename, str) else None
        if (not isinstance(codes, dict) or identity is None
                or identity != (entry.get("size"), entry.get("mtime_ns"))):
            continue
        for key, raw in codes.items():
            info = _json_info(filename, raw)
            if isinstance(key, str) and info is not None:
                _remember(identity, key, info, added=False)


def known_code(*, only_if_added: bool) -> dict[str, Any] | None:
    """The code facts known to this process for files still unchanged, as JSON-able data;
    None when ``only_if_added`` and nothing was computed since the last call."""
    global _known_added
    with _KNOWN_LOCK:
        if only_if_added and not _known_added:
            return None
        _known_added = False
        entries = [(path, (*known[:2], dict(known[2]))) for path, known in _KNOWN.items()]
    files: dict[str, Any] = {}
    for filename, (size, mtime_ns, codes) in entries:
        if _file_identity(filename) != (size, mtime_ns):
            continue
        files[filename] = {"size": size, "mtime_ns": mtime_ns, "codes": {
            key: {"own": info.own, "refs": [[*ref[:2], list(ref[2])] for ref in info.refs],
                  "stored": sorted(info.stored_globals)}
            for key, info in codes.items()
        }}
    return {"schema": _KNOWN_SCHEMA, "files": files}


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
    encoder = _Encoder(strict=False, code=None)
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
