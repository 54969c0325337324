"""The journal's clock in SQL: ``now`` and times relative to it, as expressions of the journal's database.

The clock is the database's: ``now()`` on PostgreSQL; on SQLite the local
clock as SQLite reads it, in the text form SQLAlchemy stores datetimes in, so
stored and computed times compare as text.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .schema import UTCDateTime

#: SQLite's clock in SQLAlchemy's stored datetime text (SQLite gives milliseconds; the zeros pad to micro).
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%f"


class Clock:
    """``now`` and ``now + seconds`` as SQL expressions of the journal's database."""

    def __init__(self, is_sqlite: bool) -> None:
        self.is_sqlite = is_sqlite
        sqlite_now = sa.literal_column(f"strftime('{_SQLITE_FORMAT}', 'now') || '000'", UTCDateTime())
        self.now: Any = sqlite_now if is_sqlite else sa.func.now()

    def after(self, seconds: Any) -> Any:
        """``now`` plus ``seconds`` (a number, or a SQL expression of a number: a ``bindparam``, a column)."""
        return self.shift(None, seconds)

    def shift(self, base: Any, seconds: Any) -> Any:
        """``base`` (a time column; None: now) plus ``seconds``."""
        if not isinstance(seconds, sa.ColumnElement):
            seconds = sa.bindparam(None, float(seconds), type_=sa.Float())
        if self.is_sqlite:
            start = "now" if base is None else base
            stamp = sa.func.strftime(_SQLITE_FORMAT, start, sa.func.printf("%+.6f seconds", seconds))
            return sa.type_coerce(stamp.op("||")(sa.literal("000")), UTCDateTime())
        return (sa.func.now() if base is None else base) + sa.literal_column("interval '1 second'") * seconds

    def earliest(self, *times: Any) -> Any:
        """The earliest of non-null times (SQLite's scalar ``min``, PostgreSQL's ``LEAST``)."""
        return (sa.func.min if self.is_sqlite else sa.func.least)(*times)

    def latest(self, *times: Any) -> Any:
        """The latest of non-null times."""
        return (sa.func.max if self.is_sqlite else sa.func.greatest)(*times)

    def attempt_lease(self, timeout: Any, heartbeat_timeout: Any, schedule_to_close: Any, created_at: Any) -> Any:
        """When an attempt claimed now counts as lost: after its timeout, its heartbeat timeout or the end of
        its ``schedule_to_close`` (counted from ``created_at``, never before now), whichever comes first.

        Every argument is a SQL expression (columns of the task row, or parameters), so a claim sets its
        lease in the statement that claims it.
        """
        limit = self.after(timeout)
        beat = sa.case((heartbeat_timeout > 0, self.after(heartbeat_timeout)), else_=limit)
        close = sa.case(
            (schedule_to_close > 0, self.latest(self.shift(created_at, schedule_to_close), self.now)), else_=limit
        )
        return sa.type_coerce(self.earliest(limit, beat, close), UTCDateTime())
