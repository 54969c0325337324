"""The ``journal`` fixture: every contract test runs against each backend of the SQL journal.

Backends: SQLite (a migrated file per test) and PostgreSQL (the shared test
database, emptied per test). ``travel(seconds)`` moves the journal's time
forward: every stored timestamp moves back by that much, which is the same
thing as far as any comparison with ``now()`` goes. ``state()`` dumps the
whole journal, to prove an operation wrote nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from continuum_celery.journal.base import Journal
from continuum_celery.journal.schema import UTCDateTime, metadata, migrate
from continuum_celery.journal.sql import SQLJournal


@pytest.fixture(params=["sqlite", "postgresql"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Journal]:
    """One journal, empty."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'journal.sqlite3'}"
        migrate(url)
    else:
        url = request.getfixturevalue("clean_pg")
    sql = SQLJournal(url)
    try:
        yield sql
    finally:
        sql.close()


def _sql_shift(engine: sa.Engine, seconds: float) -> None:
    delta = timedelta(seconds=seconds)
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            stamps = [c for c in table.columns if isinstance(c.type, UTCDateTime)]
            if not stamps:
                continue
            keys = list(table.primary_key.columns)
            for row in conn.execute(sa.select(*keys, *stamps)).all():
                moved = {c.name: getattr(row, c.name) - delta for c in stamps if getattr(row, c.name) is not None}
                if moved:
                    where = [k == getattr(row, k.name) for k in keys]
                    conn.execute(table.update().where(*where).values(**moved))


@pytest.fixture
def travel(journal: Journal) -> Callable[[float], None]:
    """Move the journal's time forward by some seconds."""

    def move(seconds: float) -> None:
        assert isinstance(journal, SQLJournal)
        _sql_shift(journal.engine, seconds)

    return move


@pytest.fixture
def journal_now(journal: Journal) -> Callable[[], datetime]:
    """The journal's idea of now: the database's clock, which is this machine's."""
    return lambda: datetime.now(timezone.utc)


@pytest.fixture
def state(journal: Journal) -> Callable[[], Any]:
    """Dump every table of the journal (to compare before and after a refused write)."""

    def dump() -> Any:
        assert isinstance(journal, SQLJournal)
        with journal.engine.connect() as conn:
            return {
                t.name: sorted((tuple(r) for r in conn.execute(sa.select(t))), key=repr) for t in metadata.sorted_tables
            }

    return dump
