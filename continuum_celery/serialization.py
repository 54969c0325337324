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

_SCALARS = (str, int, bool, type(None))


def _find_problem(value: Any, path: str, depth: int = 0) -> str | None:
    """Return a description of the first non-JSON part of ``value``, or None."""
    if depth > 200:
        return f"{path} is nested more than 200 levels deep"
    if isinstance(value, _SCALARS):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value!r}, which JSON cannot represent"
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
                return f"{path} has the key {key!r} of type {type(key).__name__}; JSON object keys must be str"
            problem = _find_problem(item, f"{path}[{key!r}]", depth + 1)
            if problem:
                return problem
        return None
    return f"{path} is a {type(value).__module__}.{type(value).__qualname__}"


def check_json(value: Any, what: str, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    """Validate ``value`` as plain JSON and return its canonical encoding.

    Args:
        value: the payload to store.
        what: how the caller names it in errors, e.g. ``"input of orders.flow"``.
        max_bytes: the largest encoding accepted.

    Raises:
        PayloadError: the value holds something JSON cannot carry faithfully, or is too large.
    """
    problem = _find_problem(value, what)
    if problem:
        raise PayloadError(
            f"{problem}: continuum stores payloads as JSON and pickles nothing. "
            "Pass str, int, float, bool, None, lists and dicts with str keys "
            "(convert datetimes with .isoformat(), Decimals with str(), objects with a dict).",
            what=what,
        )
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
    """Describe an exception as a JSON object: type, module, message, traceback text."""
    cls = type(exc)
    return {
        "type": cls.__qualname__,
        "module": cls.__module__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(cls, exc, exc.__traceback__))[-8000:],
    }


def error_matches(error: dict[str, Any], types: tuple[type[BaseException], ...]) -> bool:
    """True if an encoded error names one of ``types`` (by module and qualified name)."""
    return any(error.get("type") == t.__qualname__ and error.get("module") == t.__module__ for t in types)
