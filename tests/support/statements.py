"""Every distinct SQL statement this process sends to one PostgreSQL database, with its parameters.

The hook sits where psycopg sends a statement (``Cursor.execute`` and
``executemany``), below SQLAlchemy: it sees statements SQLAlchemy builds, text
run through ``exec_driver_sql`` and statements run on a raw psycopg connection
alike, from any thread, whichever layer the journal uses to reach PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

#: First words of the statements a plan can be asked for (EXPLAIN accepts these); the rest is session
#: and transaction control (BEGIN, SET, SAVEPOINT...), which has no plan.
PLANNABLE = ("select", "insert", "update", "delete", "with", "merge", "values")


#: Distinct parameter sets kept per statement (the first ones sent): enough for every workflow a
#: statement of the version heartbeat names, few enough that replaying them all stays quick.
MAX_PARAM_SETS = 50


@dataclass
class Statement:
    """One distinct statement text, and the distinct parameters it ran with (one row per ``executemany``)."""

    sql: str
    param_sets: list[Any] = field(default_factory=list)
    executions: int = 0
    _keys: set[str] = field(default_factory=set, repr=False)

    def add(self, params: Any) -> None:
        self.executions += 1
        key = repr(params)
        if key not in self._keys and len(self.param_sets) < MAX_PARAM_SETS:
            self._keys.add(key)
            self.param_sets.append(params)


class StatementCapture:
    """Records the plannable statements sent to database ``dbname`` while :meth:`active` is entered."""

    def __init__(self, dbname: str) -> None:
        self.dbname = dbname
        self._seen: dict[str, Statement] = {}
        self._lock = threading.Lock()

    @property
    def statements(self) -> list[Statement]:
        """Distinct statements, in the order they were first sent."""
        with self._lock:
            return list(self._seen.values())

    def _record(self, cursor: psycopg.Cursor[Any], query: Any, params: Any) -> None:
        if cursor.connection.info.dbname != self.dbname:
            return
        if isinstance(query, sql.Composable):
            query = query.as_string(cursor.connection)
        elif isinstance(query, bytes):
            query = query.decode()
        text = str(query)
        if not text.lstrip().lower().startswith(PLANNABLE):
            return
        with self._lock:
            self._seen.setdefault(text, Statement(text)).add(params)

    @contextmanager
    def active(self) -> Iterator[StatementCapture]:
        """Wrap psycopg's cursor methods for the block (every connection, every thread)."""
        execute, executemany = psycopg.Cursor.execute, psycopg.Cursor.executemany

        def recording_execute(cursor: psycopg.Cursor[Any], query: Any, params: Any = None, **kw: Any) -> Any:
            self._record(cursor, query, params)
            return execute(cursor, query, params, **kw)

        def recording_executemany(cursor: psycopg.Cursor[Any], query: Any, params_seq: Iterable[Any], **kw: Any) -> Any:
            rows = list(params_seq)  # it may be an iterator: read it once, hand the same rows on
            if rows:
                self._record(cursor, query, rows[0])
            return executemany(cursor, query, rows, **kw)

        psycopg.Cursor.execute = recording_execute  # type: ignore[method-assign,assignment]
        psycopg.Cursor.executemany = recording_executemany  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            psycopg.Cursor.execute = execute  # type: ignore[method-assign]
            psycopg.Cursor.executemany = executemany  # type: ignore[method-assign]
