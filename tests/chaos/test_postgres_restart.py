"""PostgreSQL goes away while runs are in flight: first every connection of the journal database is
terminated again and again, then the server crashes and restarts.

The server is a private cluster that the test owns (``initdb`` and ``pg_ctl`` on a free port), so
the shared one is never touched. Without PostgreSQL server binaries on the machine, the scenario
falls back to the shared server and only terminates its own database's connections.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.chaos.audit import audit, wait_terminal
from tests.chaos.conftest import LEASE_TTL, private_stack
from tests.chaos.faults import Phases, open_runs, signal_all, start_workers
from tests.chaos.servers import PrivatePostgres
from tests.conftest import PG_ADMIN_URL
from tests.support.flows_chaos import outside_world_flow, steps_flow
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.chaos

RUNS = 40
STEPS = 4
#: Seconds during which every backend of the journal database is terminated, every TERMINATE_EVERY s.
TERMINATE_FOR = 3.0
TERMINATE_EVERY = 0.2
#: Seconds the crashed server stays down (the fault itself, not a wait for a result).
OUTAGE = 3.0


@pytest.fixture
def journal_server(request: pytest.FixtureRequest, redis_url: str, tmp_path) -> Iterator[tuple[Stack, object]]:
    """(stack, private server) on a private PostgreSQL; (shared-server stack, None) without the binaries."""
    try:
        server = PrivatePostgres()
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"no private PostgreSQL ({exc}); terminating connections on the shared server only")
        yield request.getfixturevalue("chaos"), None
        return
    try:
        server.start()
        url = server.create_database("chaos_journal")
        with private_stack(url, redis_url, tmp_path) as stack:
            yield stack, server
    finally:
        server.close()


def _terminate_backends(admin_url: str, database: str) -> int:
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            )
            return len(rows.all())
    finally:
        engine.dispose()


def _overdue_leases(stack: Stack, since: object) -> list[str]:
    """Runs still leased a TTL after their lease expired, or after ``since`` (the server's return) if later.

    A lease lasts one TTL past its last renewal, so these have been held over twice their TTL.
    """
    rows = stack.sql(
        "SELECT id, lease_expires_at, now() AS seen_at FROM continuum_runs WHERE state = 'running' "
        "AND greatest(lease_expires_at, :since) < now() - make_interval(secs => :ttl)",
        ttl=LEASE_TTL,
        since=since,
    )
    return [f"{r.id}: expired {r.lease_expires_at}, still held at {r.seen_at}" for r in rows]


def test_runs_complete_across_postgresql_outages(journal_server: tuple[Stack, PrivatePostgres | None]) -> None:
    (stack, server), phase = journal_server, Phases("postgres")
    database = stack.database_url.rsplit("/", 1)[1]
    admin_url = server.url() if server else PG_ADMIN_URL
    workers = start_workers(stack, "pg-a", "pg-b")
    stack.beat()
    steppers = [f"pg-steps-{i}" for i in range(RUNS // 2)]
    sleepers = [f"pg-sleep-{i}" for i in range(RUNS // 2)]
    for run_id in steppers:
        steps_flow.start({"id": run_id, "steps": STEPS}, run_id=run_id)
    for run_id in sleepers:
        outside_world_flow.start({"id": run_id, "sleep": 2.0}, run_id=run_id)
    wait_until(lambda: stack.sql("SELECT count(*) AS n FROM test_effects")[0].n >= RUNS // 2, 60, "runs under way")
    phase("runs under way")

    # Fault 1: every connection to the journal database is cut, again and again.
    terminated, until = 0, time.monotonic() + TERMINATE_FOR
    while time.monotonic() < until:
        terminated += _terminate_backends(admin_url, database)
        time.sleep(TERMINATE_EVERY)  # the fault's rhythm
    phase(f"terminated {terminated} backends")

    # Fault 2: the server crashes (no clean shutdown), stays down, and comes back.
    if server is not None:
        server.stop("immediate")
        time.sleep(OUTAGE)
        server.start()
        phase("server crashed and restarted")
    back_at = stack.sql("SELECT now() AS back_at")[0].back_at
    signal_all(stack, sleepers, "after-outage")

    overdue: set[str] = set()

    def ended() -> bool:
        overdue.update(_overdue_leases(stack, back_at))
        return not open_runs(stack, steppers + sleepers)

    with contextlib.suppress(AssertionError):  # wait_terminal below describes any straggler
        wait_until(ended, 180, "every run to end after the outages", interval=0.5)
    wait_terminal(stack.sql, steppers + sleepers, timeout=5)
    phase("all ended")

    result = audit(stack.sql, expected=steppers + sleepers)
    errors = sum(w.output().count("OperationalError") for w in workers)
    print(
        f"terminated={terminated} server_starts={server.starts if server else 0} "
        f"worker_db_errors={errors} {result.summary()}"
    )
    result.assert_clean()
    assert result.states == {"completed": RUNS}
    assert result.effects == len(steppers) * STEPS + len(sleepers) * 2
    assert sorted(overdue) == []
    assert stack.sql("SELECT count(*) AS n FROM continuum_runs WHERE lease_owner IS NOT NULL")[0].n == 0
    # The same worker processes lived through it all and reconnected on their own.
    assert all(w.popen.poll() is None for w in workers)
    # The faults happened: connections were cut under the workers' feet, the server really restarted.
    assert terminated >= 1 and errors >= 1
    assert server is None or server.starts == 2
