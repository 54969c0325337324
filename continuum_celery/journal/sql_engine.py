"""The SQL journal's engines: URL forms, connection hygiene, and the pipelined-statement hook.

On PostgreSQL a pooled connection is checked without a round trip (``_drop_if_closed_by_server``),
and inside a pipelined transaction every statement not marked ``PIPELINED`` waits for its answer
(``_sync_unless_pipelined``); SQLite gets WAL and immediate write locks.
"""

from __future__ import annotations

import os
import select
from typing import Any

import sqlalchemy as sa

from ..errors import ConfigurationError
from .sql_statements import PIPELINED

#: Where a connection in a pipelined transaction keeps its psycopg pipeline.
PIPELINE_KEY = "continuum_pipeline"


def normalise_url(url: str) -> str:
    """Pick psycopg 3 for plain ``postgresql://`` URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine tuned for the journal (stale-connection check on PostgreSQL; WAL and immediate locks on SQLite)."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event emit BEGIN IMMEDIATE: one writer at a time, no upgrade deadlocks.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    engine = sa.create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        sa.event.listen(engine, "checkout", _drop_if_closed_by_server)
    sa.event.listen(engine, "after_cursor_execute", _sync_unless_pipelined)
    return engine


def _sync_unless_pipelined(
    conn: sa.Connection, cursor: Any, _statement: str, _params: Any, context: Any, _many: bool
) -> None:
    """In a pipelined transaction, wait for a statement's result unless it is marked ``PIPELINED``.

    So every statement behaves as outside a pipeline (rows, rowcount and errors at once), except
    the marked writes, which reach the server together with whatever needs an answer next.
    """
    pipeline = conn.info.get(PIPELINE_KEY)
    if pipeline is not None and not context.execution_options.get(PIPELINED):
        pipeline.sync()


def _drop_if_closed_by_server(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """Refuse a pooled connection the server has ended, without a round trip.

    An idle connection has nothing to read unless the server spoke first: when PostgreSQL ends a
    session (a restart, ``pg_terminate_backend``, an idle timeout) it sends its last message and
    closes, so the socket turns readable. A pre-ping would cost a round trip on every checkout,
    which is every step; this costs one ``poll``. Raising ``DisconnectionError`` makes the pool
    discard the connection and check out another. A connection cut without a word (a network
    partition) fails at its first statement instead, and the sweep re-sends that step.
    """
    try:
        fd = dbapi_conn.fileno()
    except Exception as exc:  # closed on our side already
        raise sa.exc.DisconnectionError("the connection is closed") from exc
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    if poller.poll(0):
        raise sa.exc.DisconnectionError("PostgreSQL ended this session while it sat in the pool")


def require_existing_journal(url: str, why: str) -> None:
    """Refuse a SQLite journal file that does not exist, before anything would create it.

    Raises:
        ConfigurationError: ``url`` names a missing SQLite file; ``why`` says why none is created.
    """
    url = normalise_url(url)
    if not url.startswith("sqlite"):
        return
    path = sa.engine.make_url(url).database
    if not path or path == ":memory:" or not os.path.exists(path):
        raise ConfigurationError(
            f"no SQLite journal at {os.path.abspath(path) if path else path!r}, and {why}, so it created none: "
            "pass --database-url (or -A your.celery_app, or set CONTINUUM_DATABASE_URL) to name your journal, "
            "or run `continuum migrate` to create this one."
        )


def read_only_engine(url: str) -> sa.Engine:
    """An engine whose connections cannot write, and that never creates a SQLite file.

    Raises:
        ConfigurationError: a SQLite journal that does not exist (nothing was created).
    """
    url = normalise_url(url)
    if url.startswith("sqlite"):
        require_existing_journal(url, "this command only reads")
        engine = sa.create_engine(url, poolclass=sa.NullPool, connect_args={"check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _query_only(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA query_only = ON")

        return engine
    engine = sa.create_engine(
        url, poolclass=sa.NullPool, connect_args={"options": "-c default_transaction_read_only=on"}
    )
    sa.event.listen(engine, "after_cursor_execute", _sync_unless_pipelined)  # its transactions pipeline too
    return engine
