"""Shared fixtures: real PostgreSQL and Redis, isolated per test run.

Each pytest run creates its own PostgreSQL database (dropped at the end) and
uses its own Redis database number and key prefix, so two runs on one machine
and a developer's own data never meet.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_ADMIN_URL = os.environ.get("CONTINUUM_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("CONTINUUM_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("CONTINUUM_TEST_REDIS_DB", "9"))


def _admin_engine():  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def create_database(name: str) -> str:
    """Create an empty PostgreSQL database and return its SQLAlchemy URL."""
    import sqlalchemy as sa

    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    import sqlalchemy as sa

    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(scope="session")
def run_token() -> str:
    """A short id unique to this pytest run, used to name databases and key prefixes."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def fresh_pg_url(run_token: str) -> Iterator[str]:
    """A brand-new, empty PostgreSQL database for one test (not migrated)."""
    name = f"continuum_t_{run_token}_{uuid.uuid4().hex[:6]}"
    url = create_database(name)
    try:
        yield url
    finally:
        drop_database(name)


@pytest.fixture(scope="session")
def pg_url(run_token: str) -> Iterator[str]:
    """One migrated PostgreSQL database shared by the run; tests clean it with ``clean_pg``."""
    from continuum_celery.journal.schema import migrate

    name = f"continuum_s_{run_token}"
    url = create_database(name)
    migrate(url)
    try:
        yield url
    finally:
        drop_database(name)


@pytest.fixture
def clean_pg(pg_url: str) -> str:
    """The shared test database with every continuum table emptied."""
    import sqlalchemy as sa

    from continuum_celery.journal.schema import metadata

    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        names = ", ".join(t.name for t in metadata.sorted_tables if t.name != "continuum_workflow_versions")
        conn.execute(sa.text(f"TRUNCATE {names}, continuum_workflow_versions"))
    engine.dispose()
    return pg_url


@pytest.fixture
def redis_prefix(run_token: str) -> Iterator[str]:
    """A key prefix unique to one test; every key under it is deleted afterwards."""
    import redis

    prefix = f"ctest:{run_token}:{uuid.uuid4().hex[:6]}:"
    yield prefix
    client = redis.Redis.from_url(f"{REDIS_BASE}/{REDIS_DB}")
    for key in client.scan_iter(match=prefix + "*", count=500):
        client.delete(key)
    client.close()


@pytest.fixture
def redis_url() -> str:
    """The Redis database number reserved for tests."""
    return f"{REDIS_BASE}/{REDIS_DB}"


@pytest.fixture
def stack(request: pytest.FixtureRequest, fresh_pg_url: str, redis_url: str, tmp_path):  # type: ignore[no-untyped-def]
    """An isolated deployment: migrated database, broker and key prefixes; stops its processes after.

    Parametrized with ``rabbitmq`` (``@on_each_broker``), the broker is a RabbitMQ vhost made for
    this test and deleted after it; Redis then only carries wake-ups.
    """
    from continuum_celery.journal.schema import migrate
    from tests.support import rabbit
    from tests.support.stack import Stack

    broker = getattr(request, "param", "redis")
    vhost = None
    if broker == "rabbitmq":
        rabbit.require_rabbitmq()
        vhost = f"ctest_{uuid.uuid4().hex[:10]}"
    migrate(fresh_pg_url)
    s = Stack(
        database_url=fresh_pg_url,
        redis_url=redis_url,
        tmp=tmp_path,
        amqp_url=rabbit.create_vhost(vhost) if vhost else None,
    )
    s.create_test_tables()
    try:
        yield s
    finally:
        s.close()
        if vhost:
            rabbit.delete_vhost(vhost)
