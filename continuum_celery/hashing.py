"""Version hashes: a fingerprint of what a workflow body means.

A run is pinned to the code it started on. ``version_hash(fn, version)``
fingerprints the *meaning* of a workflow body, so that:

* formatting, comments and docstrings do not change the hash;
* any change of a token (a constant, an operator, a called name) does;
* renaming the function does not, so an old body can be archived as
  ``order_flow_v1`` next to the new ``order_flow`` and still serve the runs
  that started on it;
* the declared ``version`` number is part of the hash.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import re
import types
from collections.abc import Callable
from typing import Any

from .errors import DefinitionError

HASH_LENGTH = 16
"""Hex characters kept from the sha256 digest (64 bits)."""

HASH_PATTERN = re.compile(rf"^[0-9a-f]{{{HASH_LENGTH}}}$")

_FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef)
_DOCSTRING_OWNERS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_DOCSTRING_PLACEHOLDER = "<docstring>"
_PLAIN_CONSTANTS = (bool, int, float, complex, str, bytes)


def version_hash(fn: Callable[..., Any], version: int) -> str:
    """Return the version hash of a workflow body.

    The source of ``fn`` (unwrapped through ``__wrapped__``) is parsed with
    :mod:`ast`; the function's decorators, its own name and every docstring
    (its own and those of nested functions and classes) are removed, and the
    remaining tree is dumped without positions. The hash is the first
    :data:`HASH_LENGTH` hex characters of ``sha256(f"{version}\\0{dump}")``.

    When the source cannot be read (a function built with ``exec``, or
    shipped without its ``.py`` file), the code object is hashed instead: its
    bytecode, constants (nested code objects included), names and signature
    counts. That fallback is stricter than the source path: bytecode differs
    between Python minor versions, and adding or removing a docstring shifts
    constant indices, so both change the hash. Changing a docstring's text
    does not.

    Call it when the function is defined: the source is read through
    :mod:`linecache`, so an edit to the file after import would be seen.

    Args:
        fn: the workflow body.
        version: the declared ``version=`` number.

    Returns:
        16 lowercase hex characters.

    Raises:
        DefinitionError: ``fn`` is neither a function with readable source
            nor an object with a code object (a ``functools.partial``, a
            builtin).
    """
    target = inspect.unwrap(fn)
    node = _function_node(target)
    if node is not None:
        fingerprint = _canonical_dump(_normalise(node))
    else:
        code = getattr(target, "__code__", None)
        if not isinstance(code, types.CodeType):
            raise DefinitionError(
                f"cannot compute a version hash for {place(fn)}: it has no readable "
                "source and no code object. Decorate a plain `def` or `async def`.",
                target=place(fn),
            )
        fingerprint = "code:" + _code_fingerprint(code, doc=target.__doc__, nested=False)
    payload = f"{version}\0{fingerprint}".encode()
    return hashlib.sha256(payload).hexdigest()[:HASH_LENGTH]


def _function_node(fn: Any) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """Parse ``fn``'s source and return its def node, or None if unavailable."""
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return None
    # An indented def (a method, a nested function) is parsed inside a dummy
    # block instead of being dedented: textwrap.dedent would also rewrite the
    # contents of multi-line string literals, and fails on those that reach
    # column 0.
    wrapped = source[:1].isspace()
    try:
        tree = ast.parse("if True:\n" + source if wrapped else source)
    except SyntaxError:
        return None
    body = tree.body[0].body if wrapped and isinstance(tree.body[0], ast.If) else tree.body
    first = body[0] if body else None
    # A lambda's "source" is the statement that contains it; hash its code instead.
    code_name = getattr(getattr(fn, "__code__", None), "co_name", None)
    if isinstance(first, _FUNCTION_NODES) and first.name == code_name:
        return first
    return None


def _normalise(node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
    """Strip what does not change behaviour: decorators, own name, docstrings."""
    node.decorator_list = []
    node.name = ""
    for owner in ast.walk(node):
        if isinstance(owner, _DOCSTRING_OWNERS) and _has_docstring(owner.body):
            owner.body = owner.body[1:]
    return node


def _has_docstring(body: list[ast.stmt]) -> bool:
    first = body[0] if body else None
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def _canonical_dump(node: object) -> str:
    """Dump an AST like ``ast.dump(include_attributes=False)``, stable across Pythons.

    ``ast.dump``'s text changed in Python 3.13 (empty fields are omitted) and
    again in 3.13 patch releases, which would give one body different hashes on
    workers running different interpreters during a rolling deploy. This dump
    always omits ``None`` and empty-list fields and nothing else.
    """
    if isinstance(node, ast.AST):
        fields = []
        for name in node._fields:
            value = getattr(node, name, None)
            if value is None or (isinstance(value, list) and not value):
                continue
            fields.append(f"{name}={_canonical_dump(value)}")
        return f"{type(node).__name__}({', '.join(fields)})"
    if isinstance(node, list):
        return "[" + ", ".join(_canonical_dump(item) for item in node) + "]"
    return repr(node)


def _code_fingerprint(code: types.CodeType, *, doc: object, nested: bool) -> str:
    """Fingerprint a code object without its (top-level) name or docstring text."""
    consts: list[object] = list(code.co_consts)
    if isinstance(doc, str) and consts and consts[0] == doc:
        consts[0] = _DOCSTRING_PLACEHOLDER
    parts = [
        code.co_name if nested else "",
        code.co_code.hex(),
        _stable_repr(tuple(consts)),
        repr(code.co_names),
        repr(code.co_varnames),
        repr(code.co_freevars),
        repr(code.co_cellvars),
        repr((code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount)),
    ]
    return "|".join(parts)


def _stable_repr(value: object) -> str:
    """A repr that does not depend on memory addresses or hash randomisation."""
    if isinstance(value, types.CodeType):
        return "<code " + _code_fingerprint(value, doc=None, nested=True) + ">"
    if isinstance(value, tuple):
        return "(" + ", ".join(_stable_repr(item) for item in value) + ",)"
    if isinstance(value, frozenset):
        # Set iteration order follows string hashes, which vary per process.
        return "frozenset({" + ", ".join(sorted(_stable_repr(item) for item in value)) + "})"
    if value is None or value is Ellipsis or isinstance(value, _PLAIN_CONSTANTS):
        return repr(value)
    return f"<{type(value).__qualname__}>"


def place(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of a function, for messages."""
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}:{qualname}"
