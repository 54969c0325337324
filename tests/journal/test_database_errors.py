"""Database errors leave the journal as errors of continuum's tree, raised from the driver's own.

On real servers: a closed port, a SQLite file in no directory, a database without the
schema, a connection the server terminates, a lock held past ``lock_timeout``.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from continuum_celery.errors import (
    ConfigurationError,
    JournalError,
    JournalUnavailable,
    LeaseLost,
    RunNotFound,
    SchemaNotMigrated,
)
from continuum_celery.journal.records import Lease, NewRun
from continuum_celery.journal.schema import migrate
from continuum_celery.journal.sql import SQLJournal
from continuum_celery.journal.sql_statements import PIPELINED
from tests.conftest import create_database, drop_database

CLOSED_PORT = "postgresql://postgres@127.0.0.1:1/continuum"


def new_run(run_id: str) -> NewRun:
    return NewRun(run_id, "tests.errors.flow", "0" * 16, 1, {"n": 1})


@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated_url(request: pytest.FixtureRequest, tmp_path: Path, run_token: str) -> Iterator[str]:
    """A database that exists and holds no continuum table."""
    if request.param == "sqlite":
        path = tmp_path / "empty.sqlite3"
        sqlite3.connect(path).close()
        yield f"sqlite:///{path}"
        return
    name = f"continuum_e_{run_token}_{uuid.uuid4().hex[:6]}"
    url = create_database(name)
    try:
        yield url
    finally:
        drop_database(name)


def test_a_closed_port_is_journal_unavailable_with_the_drivers_error_chained() -> None:
    with pytest.raises(JournalUnavailable, match="cannot reach the journal database") as raised:
        SQLJournal(CLOSED_PORT)
    assert isinstance(raised.value.__cause__, psycopg.OperationalError)
    assert raised.value.url == "postgresql+psycopg://postgres@127.0.0.1:1/continuum"


def test_migrating_a_closed_port_is_journal_unavailable() -> None:
    with pytest.raises(JournalUnavailable, match="cannot reach") as raised:
        migrate(CLOSED_PORT)
    assert isinstance(raised.value.__cause__, psycopg.OperationalError)


def test_a_sqlite_file_in_no_directory_is_journal_unavailable(tmp_path: Path) -> None:
    with pytest.raises(JournalUnavailable, match="unable to open database file") as raised:
        SQLJournal(f"sqlite:///{tmp_path / 'no-such-dir' / 'journal.sqlite3'}")
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)


def test_a_url_sqlalchemy_cannot_use_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="is not usable") as raised:
        SQLJournal("nosuchdialect://somewhere/db")
    assert isinstance(raised.value.__cause__, sa.exc.NoSuchModuleError)


def test_a_database_without_the_schema_says_to_migrate(unmigrated_url: str) -> None:
    with pytest.raises(SchemaNotMigrated, match="has no continuum tables: run `continuum migrate`"):
        SQLJournal(unmigrated_url)
    # Tables missing under a journal already open (dropped, or a check skipped): the same error.
    journal = SQLJournal(unmigrated_url, check=False)
    try:
        with pytest.raises(SchemaNotMigrated, match="lacks a continuum table or column") as read:
            journal.get_run("some-run")
        assert "run `continuum migrate`" in str(read.value)
        with pytest.raises(SchemaNotMigrated) as write:
            journal.create_run(new_run("some-run"))
        assert isinstance(write.value.__cause__, (psycopg.errors.UndefinedTable, sqlite3.OperationalError))
    finally:
        journal.close()


def test_domain_errors_are_untouched(journal: SQLJournal) -> None:
    with pytest.raises(RunNotFound):
        journal.get_run("no-such-run")
    journal.create_run(new_run("domain-1"))
    with pytest.raises(LeaseLost):
        journal.renew(Lease("domain-1", 99, "nobody"), 10)


def test_a_connection_the_server_drops_is_journal_unavailable_then_the_journal_reconnects(clean_pg: str) -> None:
    journal = SQLJournal(clean_pg)
    admin = sa.create_engine(clean_pg, isolation_level="AUTOCOMMIT")
    try:
        journal.create_run(new_run("dropped-1"))
        with journal.holding_connection():  # a step loop's: writes run on one connection
            journal.send_signal("dropped-1", "first", 1)
            with admin.connect() as conn:
                killed = conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            assert killed >= 1
            with pytest.raises(JournalUnavailable) as raised:
                journal.send_signal("dropped-1", "second", 2)
            assert isinstance(raised.value.__cause__, psycopg.OperationalError)
        journal.send_signal("dropped-1", "third", 3)  # a new connection serves the next call
        with admin.connect() as conn:
            inbox = conn.execute(sa.text("SELECT name FROM continuum_signals ORDER BY id")).scalars().all()
        assert inbox == ["first", "third"], "the write that lost its connection left nothing"
    finally:
        journal.close()
        admin.dispose()


def test_a_lock_held_past_lock_timeout_is_journal_unavailable(clean_pg: str) -> None:
    journal = SQLJournal(clean_pg + "?options=-c%20lock_timeout%3D200")
    holder = sa.create_engine(clean_pg)
    try:
        journal.create_run(new_run("locked-1"))
        with holder.begin() as conn:
            conn.execute(sa.text("SELECT id FROM continuum_runs WHERE id = 'locked-1' FOR UPDATE"))
            with pytest.raises(JournalUnavailable) as raised:
                journal.send_signal("locked-1", "go", 1)
        assert isinstance(raised.value.__cause__, psycopg.errors.LockNotAvailable)
        assert raised.value.sqlstate == "55P03"
        assert journal.send_signal("locked-1", "go", 1) is not None, "the journal is usable once the lock is gone"
    finally:
        journal.close()
        holder.dispose()


def test_a_statement_the_database_refuses_is_a_journal_error(journal: SQLJournal) -> None:
    with pytest.raises(JournalError, match="refused a statement") as raised, journal.engine.begin() as conn:
        conn.execute(sa.text("SELECT no_such_function()"))
    assert not isinstance(raised.value, (JournalUnavailable, SchemaNotMigrated))
    assert raised.value.__cause__ is not None


def test_a_pipelined_write_that_fails_at_commit_is_translated_too(clean_pg: str) -> None:
    # On PostgreSQL a write marked PIPELINED is answered only with the COMMIT: its error comes
    # from the pipeline's last sync, outside any statement SQLAlchemy runs.
    journal = SQLJournal(clean_pg + "?options=-c%20lock_timeout%3D200")
    holder = sa.create_engine(clean_pg)
    queued = {PIPELINED: True}
    try:
        journal.create_run(new_run("piped-1"))
        with pytest.raises(JournalError, match="refused a statement") as refused, journal._tx() as conn:
            conn.execute(sa.text("SELECT no_such_function()").execution_options(**queued))
        assert isinstance(refused.value.__cause__, psycopg.errors.UndefinedFunction)
        with holder.begin() as locked:
            locked.execute(sa.text("SELECT id FROM continuum_runs WHERE id = 'piped-1' FOR UPDATE"))
            update = sa.text("UPDATE continuum_runs SET stuck_reason = 'x' WHERE id = 'piped-1'")
            with pytest.raises(JournalUnavailable) as timed_out, journal._tx() as conn:
                conn.execute(update.execution_options(**queued))
        assert isinstance(timed_out.value.__cause__, psycopg.errors.LockNotAvailable)
        assert journal.get_run("piped-1").stuck_reason is None
    finally:
        journal.close()
        holder.dispose()
