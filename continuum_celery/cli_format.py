"""Text helpers for the CLI and the doctor: times, durations, compact JSON, tables."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import click

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)", re.IGNORECASE)
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def span(seconds: float) -> str:
    """A short human duration: ``42s``, ``15m``, ``3.5h``, ``2.0d``."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def stamp(at: datetime | None) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC, or ``-``."""
    return "-" if at is None else at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def when(at: datetime | None, now: datetime) -> str:
    """A timestamp with its distance from ``now``: ``2024-05-01 12:00:00 UTC (in 42s)`` / ``(3m ago)``."""
    if at is None:
        return "never"
    delta = (at - now).total_seconds()
    rel = f"in {span(delta)}" if delta >= 0 else f"{span(-delta)} ago"
    return f"{stamp(at)} UTC ({rel})"


def ago(at: datetime | None, now: datetime) -> str:
    """How long ago ``at`` was: ``42s``, ``3m`` (``-`` when unknown)."""
    return "-" if at is None else span(max(0.0, (now - at).total_seconds()))


def heartbeat_text(heartbeat_at: datetime | None, details: Any, now: datetime) -> str:
    """``, last heartbeat 3s ago: {"rows": 1200}``, or nothing when the attempt never sent one."""
    if heartbeat_at is None:
        return ""
    shown = f": {compact(details, 60)}" if details is not None else ""
    return f", last heartbeat {ago(heartbeat_at, now)} ago{shown}"


def parse_age(text: str) -> timedelta:
    """Read ``90s``, ``15m``, ``2h``, ``7d``, ``1w`` or combinations like ``1h30m``.

    Raises:
        ValueError: the text is not such a duration.
    """
    compact = text.replace(" ", "")
    parts = _DURATION.findall(compact)
    if not parts or "".join(f"{n}{u}" for n, u in parts).lower() != compact.lower():
        raise ValueError(f"{text!r} is not an age: use a number with a unit, like 90s, 15m, 2h, 7d or 1h30m")
    return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in parts))


#: Largest count or offset a query takes: a signed 64-bit integer, in PostgreSQL and in SQLite.
MAX_SQL_INT = 2**63 - 1


def sql_count(minimum: int) -> click.IntRange:
    """The click type of a count or offset option: a value the database cannot take is bad usage (exit 2)."""
    return click.IntRange(minimum, MAX_SQL_INT)


def cutoff(age: str, now: datetime) -> datetime:
    """``now`` minus the age ``age`` (``90s``, ``7d``, ``1h30m``).

    Raises:
        ValueError: ``age`` is not an age, or reaches back before the year 1.
    """
    try:
        return now - parse_age(age)
    except OverflowError:
        raise ValueError(f"{age!r} reaches back before the year 1: use a shorter age, or no age at all") from None


def jsonable(value: Any) -> Any:
    """``value`` with dataclasses, datetimes and tuples turned into JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    return value


def compact(value: Any, width: int = 80) -> str:
    """One-line JSON of ``value``, cut to ``width`` characters with an ellipsis."""
    text = json.dumps(jsonable(value), sort_keys=True, separators=(", ", ": "), default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    click.echo(json.dumps(jsonable(value), indent=2, sort_keys=True, default=str))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain left-aligned text table; the last column is not padded."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(widths[i]) if i < len(row) - 1 else c for i, c in enumerate(row)]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


__all__ = [
    "MAX_SQL_INT",
    "ago",
    "compact",
    "cutoff",
    "echo_json",
    "jsonable",
    "parse_age",
    "span",
    "sql_count",
    "stamp",
    "table",
    "when",
]
