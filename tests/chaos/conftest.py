"""Fixtures of the chaos suite: stacks tuned for fast recovery, and private servers to crash.

Every stack here runs the workflows of ``tests.support.flows_chaos`` with short
leases and a beat sweep every half second, so a fault is noticed and repaired
in seconds. Run the suite alone with ``pytest -m chaos``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from continuum_celery.journal.schema import migrate
from tests.chaos.servers import PrivatePostgres, PrivateRedis
from tests.support.stack import Stack

#: Seconds a run lease lasts in the chaos stacks (renewed at a third of it while a step runs).
LEASE_TTL = 3.0
#: Sweep every half second; re-send a dispatch nobody claimed within 3 s. A scenario with a long
#: queue raises the latter: a message that merely waits in a busy queue would be sent again, and the
#: duplicates slow everything down.
CHAOS_ENV = {"CONTINUUM_SWEEP_INTERVAL": "0.5", "CONTINUUM_REDISPATCH_AFTER": "3"}
MODULES = ("tests.support.flows_chaos",)


def configure(stack: Stack) -> Stack:
    """Point ``stack`` at the chaos workflows and fast-recovery settings; build its client."""
    stack.modules = MODULES
    stack.lease_ttl = LEASE_TTL
    stack.extra_env.update(CHAOS_ENV)
    stack.client()
    return stack


@contextlib.contextmanager
def private_stack(database_url: str, redis_url: str, tmp: Path, **fields: Any) -> Iterator[Stack]:
    """A chaos stack on servers the test owns (migrated database, test tables); stops its processes after.

    ``fields`` go to :class:`Stack` (``amqp_url``, ``wakeup_redis_url``).
    """
    migrate(database_url)
    stack = Stack(database_url=database_url, redis_url=redis_url, tmp=tmp, **fields)
    stack.create_test_tables()
    try:
        yield configure(stack)
    finally:
        stack.close()


@pytest.fixture
def chaos(stack: Stack) -> Stack:
    """The shared servers' isolated stack, configured for chaos."""
    return configure(stack)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, on a free port."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_chaos(fresh_pg_url: str, private_redis: PrivateRedis, tmp_path: Path) -> Iterator[Stack]:
    """A chaos stack whose broker and wake-ups live on the private Redis."""
    with private_stack(fresh_pg_url, private_redis.url, tmp_path) as stack:
        yield stack


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this test's own, on a free port."""
    try:
        server = PrivatePostgres()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_chaos(private_pg: PrivatePostgres, redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """A chaos stack whose journal lives on the private PostgreSQL (broker on the test Redis db)."""
    url = private_pg.create_database(f"chaos_{uuid.uuid4().hex[:8]}")
    with private_stack(url, redis_url, tmp_path) as stack:
        yield stack
