"""Canonical JSON for everything the journal stores: inputs, arguments, results, errors.

Nothing is pickled. A value that is not plain JSON is refused *at the call site*,
before anything is written, with a message that names where in the value the
problem sits (``input['items'][2]``) and how to fix it.
"""

from __future__ import annotations

import json
import math
import traceback
from typing import Any

from .errors import PayloadError

#: Largest encoded payload accepted for one value (input, argument list, result, signal).
DEFAULT_MAX_PAYLOAD_BYTES = 1_000_000
#: Most digits of an int in a payload: Python's default int-str limit, so any worker can read it back.
MAX_INT_DIGITS = 4300
#: The smallest int with more than MAX_INT_DIGITS digits.
_TOO_BIG_INT = 10**MAX_INT_DIGITS
#: Longest error message kept in an error payload; a traceback keeps its last 8,000 characters.
MAX_ERROR_MESSAGE = 8000

_TYPE_FIX = (
    "continuum stores payloads as JSON and pickles nothing. "
    "Pass str, int, float, bool, None, lists and dicts with str keys "
    "(convert datetimes with .isoformat(), Decimals with str(), objects with a dict)."
)
_SURROGATE_FIX = (
    "JSON text must be valid UTF-8. Such text usually comes from bytes decoded with "
    "errors='surrogateescape' (os.fsdecode of a non-UTF-8 file name): decode the bytes with "
    "errors='replace', or pass them as hex (data.hex())."
)
_BIG_INT_FIX = (
    f"a JSON reader refuses ints of more than {MAX_INT_DIGITS} digits: pass the number as text, "
    "e.g. hex(n), and convert it back with int(text, 16)."
)


def _text_problem(text: str, where: str) -> tuple[str, str] | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{where} holds the lone surrogate {text[exc.start]!r} at index {exc.start}", _SURROGATE_FIX
    return None


def _int_problem(value: int, path: str) -> tuple[str, str] | None:
    if -_TOO_BIG_INT < value < _TOO_BIG_INT:
        return None
    return f"{path} is an int of more than {MAX_INT_DIGITS} digits", _BIG_INT_FIX


def _find_problem(value: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    """Describe the first part of ``value`` JSON cannot carry faithfully, and its fix; or None."""
    if depth > 200:
        return f"{path} is nested more than 200 levels deep", _TYPE_FIX
    if isinstance(value, str):
        return _text_problem(value, path)
    if isinstance(value, int):  # bool too
        return _int_problem(value, path)
    if value is None:
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (f"{path} is {value!r}, which JSON cannot represent", _TYPE_FIX)
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _find_problem(item, f"{path}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                # json.dumps would silently turn 1 into "1": the workflow would see another value on replay.
                return (
                    f"{path} has the key {key!r} of type {type(key).__name__}; JSON object keys must be str",
                    _TYPE_FIX,
                )
            problem = _text_problem(key, f"{path} has a key that") or _find_problem(item, f"{path}[{key!r}]", depth + 1)
            if problem:
                return problem
        return None
    return f"{path} is a {type(value).__module__}.{type(value).__qualname__}", _TYPE_FIX


def check_storable(value: Any, what: str) -> None:
    """Refuse ``value`` unless the journal can store it as JSON and hand it back unchanged.

    Raises:
        PayloadError: the value holds a non-JSON type, a non-str key, a lone surrogate, an int
            of more than ``MAX_INT_DIGITS`` digits, or more than 200 levels of nesting; the
            message names where (``input['items'][2]``) and the fix.
    """
    problem = _find_problem(value, what)
    if problem:
        found, fix = problem
        raise PayloadError(f"{found}: {fix}", what=what)


def check_json(value: Any, what: str, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    """Validate ``value`` as plain JSON (see :func:`check_storable`) and return its canonical encoding.

    Args:
        value: the payload to store.
        what: how the caller names it in errors, e.g. ``"input of orders.flow"``.
        max_bytes: the largest encoding accepted.

    Raises:
        PayloadError: the value is not storable, or its encoding is over ``max_bytes``.
    """
    check_storable(value, what)
    encoded = dumps(value)
    size = len(encoded.encode("utf-8"))
    if size > max_bytes:
        raise PayloadError(
            f"{what} is {size} bytes of JSON, over the {max_bytes}-byte limit: store large data "
            "elsewhere (object storage, a table) and pass its key.",
            what=what,
            size=size,
            limit=max_bytes,
        )
    return encoded


def dumps(value: Any) -> str:
    """Encode ``value`` as canonical JSON (sorted keys, no spaces, no NaN)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def loads(text: str | bytes | None) -> Any:
    """Decode JSON text; ``None`` stays ``None``."""
    return None if text is None else json.loads(text)


def roundtrip(value: Any) -> Any:
    """Return ``value`` as the journal will hand it back (tuples become lists)."""
    return json.loads(dumps(value))


def encode_error(exc: BaseException) -> dict[str, Any]:
    """Describe an exception as a JSON object: type, module, message, traceback text.

    Always storable, whatever the exception holds: text UTF-8 cannot encode is escaped
    (a lone surrogate becomes the six characters ``\\udce9``), a long message is cut, and a
    ``__str__`` that raises is reported instead of propagated. A failure must be recordable,
    or the run could never end.
    """
    cls = type(exc)
    try:
        message = str(exc)
    except Exception as failure:  # a user-defined __str__ may raise anything
        message = f"<{cls.__qualname__} whose str() raised {type(failure).__qualname__}>"
    if len(message) > MAX_ERROR_MESSAGE:
        message = f"{message[:MAX_ERROR_MESSAGE]}... ({len(message) - MAX_ERROR_MESSAGE} more characters)"
    trace = "".join(traceback.format_exception(cls, exc, exc.__traceback__))[-8000:]
    return {
        "type": _safe_text(cls.__qualname__),
        "module": _safe_text(str(cls.__module__)),
        "message": _safe_text(message),
        "traceback": _safe_text(trace),
    }


def _safe_text(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) written as backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_matches(error: dict[str, Any], types: tuple[type[BaseException], ...]) -> bool:
    """True if an encoded error names one of ``types`` (by module and qualified name)."""
    return any(error.get("type") == t.__qualname__ and error.get("module") == t.__module__ for t in types)
