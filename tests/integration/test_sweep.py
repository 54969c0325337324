"""The beat sweep: its indexes on PostgreSQL, and recovery through real worker and beat processes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from continuum_celery.journal.records import NewRun
from continuum_celery.journal.schema import migrate
from continuum_celery.journal.sql import SQLJournal
from tests.conftest import REDIS_DB
from tests.support.flows_time import hold_activity, hold_lease, nap_or_signal, timers
from tests.support.stack import Proc, Stack, wait_until

IDLE_RUNS = 100_000
DUE_RUNS = 20
EXPIRED_RUNS = 5
NEW_TASKS = 4
RETRY_TASKS = 7
EXPIRED_TASKS = 3

# ---- the sweep reads only due rows ----------------------------------------------------------


@pytest.fixture(scope="module")
def idle_db(run_token: str) -> Iterator[str]:
    """A journal of 100,000 idle suspended runs and finished tasks, parked and held runs, a few due of each kind."""
    from tests.conftest import create_database, drop_database

    name = f"continuum_t_{run_token}_sweep_plan"
    url = create_database(name)
    migrate(url)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    run_cols = (
        "id, workflow, version_hash, version, state, input, next_wakeup_at, lease_expires_at, "
        "correlation_id, created_at, updated_at"
    )
    with engine.begin() as conn:
        # Idle: half wait on a signal with no timeout (NULL), half sleep for a year.
        conn.execute(
            sa.text(
                f"INSERT INTO continuum_runs ({run_cols}) SELECT 'idle-' || g, 'wf', 'h', 1, 'suspended', 'null', "
                "CASE WHEN g % 2 = 0 THEN NULL ELSE now() + interval '365 days' END, NULL, 'idle-' || g, now(), now() "
                f"FROM generate_series(1, {IDLE_RUNS}) g"
            )
        )
        conn.execute(
            sa.text(
                f"INSERT INTO continuum_runs ({run_cols}) SELECT 'due-' || g, 'wf', 'h', 1, 'suspended', 'null', "
                "now() - interval '1 minute', NULL, 'due-' || g, now(), now() "
                f"FROM generate_series(1, {DUE_RUNS}) g"
            )
        )
        # Parked for a version no worker has: past their wake-up time, yet not due.
        conn.execute(
            sa.text(
                f"INSERT INTO continuum_runs ({run_cols}, stuck_reason) SELECT 'stuck-' || g, 'wf', 'h', 1, "
                "'suspended', 'null', now() - interval '1 hour', NULL, 'stuck-' || g, now(), now(), 'unknown_version' "
                "FROM generate_series(1, 1000) g"
            )
        )
        # Held by live workers (lease in the future) and by dead ones (expired).
        conn.execute(
            sa.text(
                f"INSERT INTO continuum_runs ({run_cols}) SELECT 'held-' || g, 'wf', 'h', 1, 'running', 'null', "
                "NULL, CASE WHEN g <= :expired THEN now() - interval '1 minute' ELSE now() + interval '30 s' END, "
                "'held-' || g, now(), now() FROM generate_series(1, 1000) g"
            ),
            {"expired": EXPIRED_RUNS},
        )
        task_cols = (
            "id, run_id, command_id, kind, name, arguments, state, attempt, max_attempts, retry_policy, "
            "retry_at, dispatched_at, lease_expires_at, created_at, updated_at"
        )
        conn.execute(
            sa.text(
                f"INSERT INTO continuum_activity_tasks ({task_cols}) SELECT 'done-' || g, 'idle-' || g, 1, "
                "'activity', 'a', '{}', 'completed', 1, 1, '{}', NULL, NULL, NULL, now(), now() "
                f"FROM generate_series(1, {IDLE_RUNS}) g"
            )
        )
        conn.execute(
            sa.text(
                f"INSERT INTO continuum_activity_tasks ({task_cols}) SELECT 'wait-' || g, 'held-' || g, 1, "
                "'activity', 'a', '{}', 'scheduled', 2, 5, '{}', "
                "CASE WHEN g <= :due THEN now() - interval '1 s' ELSE now() + interval '1 hour' END, "
                "now() - interval '1 hour', NULL, now(), now() FROM generate_series(1, 200) g"
            ),
            {"due": RETRY_TASKS},
        )
        # First attempts never sent (their message lost): retry_at NULL.
        conn.execute(
            sa.text(
                f"INSERT INTO continuum_activity_tasks ({task_cols}) SELECT 'new-' || g, 'held-' || g, 3, "
                "'activity', 'a', '{}', 'scheduled', 1, 5, '{}', NULL, now() - interval '1 hour', NULL, now(), now() "
                f"FROM generate_series(1, {NEW_TASKS}) g"
            )
        )
        conn.execute(
            sa.text(
                f"INSERT INTO continuum_activity_tasks ({task_cols}) SELECT 'run-' || g, 'held-' || g, 2, "
                "'activity', 'a', '{}', 'running', 1, 5, '{}', NULL, NULL, "
                "CASE WHEN g <= :expired THEN now() - interval '1 s' ELSE now() + interval '1 hour' END, now(), now() "
                "FROM generate_series(1, 200) g"
            ),
            {"expired": EXPIRED_TASKS},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))
    engine.dispose()
    try:
        yield url
    finally:
        drop_database(name)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _compiled(query: Any, paramstyle: str = "pyformat") -> Any:
    return query.compile(dialect=postgresql.dialect(paramstyle=paramstyle), compile_kwargs={"render_postcompile": True})


def _sweep_query(url: str, name: str) -> Any:
    """The sweep's claiming query ``name`` as the journal builds it (batch 500, redispatch after 15 s)."""
    journal = SQLJournal(url)
    try:
        return journal.sweep_queries(500, 15.0)[name]
    finally:
        journal.close()


SWEEP_INDEXES = {
    "due_runs": ("continuum_runs", "continuum_runs_due", DUE_RUNS),
    "expired_runs": ("continuum_runs", "continuum_runs_leased", EXPIRED_RUNS),
    "new_tasks": ("continuum_activity_tasks", "continuum_activity_tasks_due", NEW_TASKS),
    "retry_tasks": ("continuum_activity_tasks", "continuum_activity_tasks_due", RETRY_TASKS),
    "expired_tasks": ("continuum_activity_tasks", "continuum_activity_tasks_leased", EXPIRED_TASKS),
}


@pytest.mark.parametrize("name", sorted(SWEEP_INDEXES))
def test_each_sweep_query_reads_only_due_rows_through_its_partial_index(idle_db: str, name: str) -> None:
    table, index, due = SWEEP_INDEXES[name]
    compiled = _compiled(_sweep_query(idle_db, name))
    engine = sa.create_engine(idle_db, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            # ANALYZE executes the query (its row locks go with the rollback) and reports rows actually read.
            raw = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}", dict(compiled.params)).scalar()
            conn.rollback()
    finally:
        engine.dispose()
    plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    scans = [n for n in _nodes(plan) if n.get("Relation Name") == table]
    assert [n["Node Type"] for n in scans] == ["Index Scan"], json.dumps(plan, indent=1)
    assert scans[0]["Index Name"] == index
    assert scans[0]["Actual Rows"] == due  # found exactly the due rows...
    assert scans[0].get("Rows Removed by Filter", 0) == 0  # ...and read no idle one
    assert not any(n["Node Type"] == "Seq Scan" for n in _nodes(plan))


@pytest.mark.parametrize("name", sorted(SWEEP_INDEXES))
def test_a_generically_planned_sweep_query_still_uses_its_partial_index(idle_db: str, name: str) -> None:
    # psycopg prepares a statement it has run a few times; PostgreSQL may then plan it once for all
    # parameter values. The partial index must still match: the states are inlined, not parameters.
    table, index, _ = SWEEP_INDEXES[name]
    compiled = _compiled(_sweep_query(idle_db, name), paramstyle="numeric_dollar")
    values = [compiled.params[key] for key in compiled.positiontup]
    sql_types = {timedelta: "interval", int: "integer", str: "text"}
    types = ", ".join(sql_types[type(v)] for v in values)
    args = ", ".join(f"interval '{v.total_seconds()} seconds'" if isinstance(v, timedelta) else repr(v) for v in values)
    engine = sa.create_engine(idle_db, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
            conn.exec_driver_sql(f"PREPARE sweep_q ({types}) AS {compiled}")
            raw = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) EXECUTE sweep_q({args})").scalar()
            conn.rollback()
    finally:
        engine.dispose()
    plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    scans = [n for n in _nodes(plan) if n.get("Relation Name") == table]
    assert [(n["Node Type"], n.get("Index Name")) for n in scans] == [("Index Scan", index)], json.dumps(plan)


def test_the_due_backlog_counts_due_work_through_the_indexes(idle_db: str) -> None:
    journal = SQLJournal(idle_db)
    try:
        assert journal.due_backlog() == DUE_RUNS + EXPIRED_RUNS + NEW_TASKS + RETRY_TASKS + EXPIRED_TASKS
    finally:
        journal.close()


# ---- what one sweep claims ---------------------------------------------------------------------


@pytest.fixture
def journal(clean_pg: str) -> Iterator[SQLJournal]:
    j = SQLJournal(clean_pg)
    yield j
    j.close()


def _new_runs(journal: SQLJournal, n: int, **times: str) -> list[str]:
    """``n`` pending runs, then ``column = now() + <interval>`` for each of ``times``."""
    ids = [f"r{i:03d}" for i in range(n)]
    for run_id in ids:
        journal.create_run(NewRun(id=run_id, workflow="wf", version_hash="h", version=1, input=None))
    with journal.engine.begin() as conn:
        for column, interval in times.items():
            conn.execute(sa.text(f"UPDATE continuum_runs SET {column} = now() + interval '{interval}'"))
    return ids


def _swept(journal: SQLJournal, batch: int = 100) -> list[str]:
    dispatches = journal.sweep(batch=batch, redispatch_after=15)
    assert {d.kind for d in dispatches} <= {"replay"}
    return sorted(d.id for d in dispatches)


def test_sweeps_claim_bounded_batches_and_skip_rows_another_sweep_holds(journal: SQLJournal) -> None:
    ids = _new_runs(journal, 30, next_wakeup_at="-1 s")
    with journal.engine.begin() as conn:
        conn.execute(sa.text("UPDATE continuum_runs SET dispatched_at = NULL"))
    other = journal.engine.connect()
    try:
        other.begin()
        # Another sweep's transaction holds the first ten rows...
        held = other.execute(
            sa.text("SELECT id FROM continuum_runs WHERE id = ANY(:ids) FOR UPDATE"), {"ids": ids[:10]}
        ).all()
        assert len(held) == 10
        # ...so this one neither waits for them nor takes them, and claims at most a batch.
        assert _swept(journal, batch=15) == ids[10:25]
        assert _swept(journal, batch=15) == ids[25:]
        assert _swept(journal, batch=15) == []
        other.rollback()
    finally:
        other.close()
    assert _swept(journal, batch=15) == ids[:10]
    assert _swept(journal) == []
    assert journal.due_backlog() == 30  # due and dispatched, but claimed by no worker yet


def test_the_sweep_event_reports_what_was_sent_and_the_due_backlog(clean_pg: str) -> None:
    from celery import Celery

    from continuum_celery import Continuum, telemetry

    engine = Continuum(Celery("sweep-event", broker="memory://"), database_url=clean_pg, name="sweep-event")
    journal = engine.journal
    assert isinstance(journal, SQLJournal)
    ids = _new_runs(journal, 7, next_wakeup_at="-1 s")
    with journal.engine.begin() as conn:
        conn.execute(sa.text("UPDATE continuum_runs SET dispatched_at = NULL WHERE id = ANY(:ids)"), {"ids": ids[:3]})
    seen: list[telemetry.TelemetryEvent] = []
    unsubscribe = telemetry.subscribe(seen.append, ["sweep"])
    try:
        assert engine.sweep_once() == 3
        assert engine.sweep_once() == 0
    finally:
        unsubscribe()
        journal.close()
    # All seven are due and unclaimed: three were just sent, four were sent at creation.
    assert [(e.fields["dispatched"], e.fields["due_backlog"]) for e in seen] == [(3, 7), (0, 7)]


@pytest.mark.parametrize(
    ("due", "dispatched", "sent_again"),
    [
        ("-25 s", "-20 s", True),  # sent 5 s after it was due: again after 15 s
        ("-100 s", "-20 s", False),  # sent 80 s after it was due: again only after 80 s
        ("-100 s", "-90 s", True),  # sent 10 s after it was due, 90 s ago
        ("-3 hours", "-130 s", True),  # the wait is capped at 8 x 15 s
        ("-3 hours", "-100 s", False),
        ("-25 s", "-10 s", False),  # sent 10 s ago: too recent in any case
    ],
)
def test_a_dispatched_run_is_sent_again_after_a_growing_wait(
    journal: SQLJournal, due: str, dispatched: str, sent_again: bool
) -> None:
    ids = _new_runs(journal, 1, next_wakeup_at=due, dispatched_at=dispatched)
    assert _swept(journal) == (ids if sent_again else [])


# ---- recovery through real worker and beat processes ------------------------------------------

MODULES = ("tests.support.flows", "tests.support.flows_time")
#: Fast sweeps for the tests (production default: every 5 s, redispatch after 15 s).
FAST_SWEEP = {"CONTINUUM_SWEEP_INTERVAL": "0.5", "CONTINUUM_REDISPATCH_AFTER": "8"}


def _lose_redis(stack: Stack, redis_url: str) -> None:
    """Redis loses everything: FLUSHDB on a test db of one's own, else every key of this deployment.

    The default test db (9) is shared with other test runs on the machine, so there only this
    stack's keys go (its broker queues, bindings, unacked messages, wake-ups): the same loss for it.
    """
    client = redis.Redis.from_url(redis_url)
    try:
        if REDIS_DB != 9:
            client.flushdb()
            assert client.dbsize() == 0
        else:
            for key in client.scan_iter(match=f"ctest:{stack.token}:*", count=1000):
                client.delete(key)
            assert not list(client.scan_iter(match=f"ctest:{stack.token}:*", count=1000))
    finally:
        client.close()


def _sweep_dispatches(proc: Proc) -> int:
    """What the sweeps run by a worker sent, from its log (``continuum.sweep[...] succeeded in ...: N``)."""
    return sum(int(n) for n in re.findall(r"continuum\.sweep\[[^\]]+\] succeeded in [0-9.e-]+s: (\d+)", proc.output()))


def _states(stack: Stack, ids: list[str]) -> dict[str, int]:
    rows = stack.sql("SELECT state, count(*) AS n FROM continuum_runs WHERE id = ANY(:ids) GROUP BY state", ids=ids)
    return {r.state: r.n for r in rows}


def test_redis_flushed_while_50_runs_sleep_or_wait_all_complete_through_the_sweep(stack: Stack, redis_url: str) -> None:
    stack.modules = MODULES
    stack.client()
    first = stack.worker(concurrency=4, **FAST_SWEEP)
    stack.beat(**FAST_SWEEP)
    sleepers = [nap_or_signal.start({"id": i, "sleep": 6}) for i in range(25)]
    waiters = [nap_or_signal.start({"id": 25 + i}) for i in range(25)]
    ids = [h.id for h in sleepers + waiters]
    wait_until(
        lambda: (
            stack.sql(
                "SELECT count(*) AS n FROM continuum_timers WHERE run_id = ANY(:ids) AND state = 'pending'", ids=ids
            )[0].n
            == 50
            and _states(stack, ids) == {"suspended": 50}
        ),
        60,
        "all 50 runs to sleep or wait",
    )
    first.kill()  # nothing is leased: every run is suspended
    for handle in waiters:  # replay messages that no worker takes before Redis loses them
        handle.signal("go", handle.id)
    asleep = stack.sql(
        "SELECT count(*) AS n FROM continuum_timers WHERE run_id = ANY(:ids) AND kind = 'sleep' AND state = 'pending'",
        ids=ids,
    )[0].n
    _lose_redis(stack, redis_url)
    # Its own sweep is off: the dispatches counted below are all the beat sweep's.
    second = stack.worker(concurrency=4, CONTINUUM_WORKER_SWEEP_INTERVAL="0", **FAST_SWEEP)
    wait_until(lambda: _states(stack, ids) == {"completed": 50}, 90, "all 50 runs to complete after the flush")
    assert [h.result(timeout=5) for h in sleepers] == [{"id": i, "value": "slept"} for i in range(25)]
    assert [h.result(timeout=5) for h in waiters] == [{"id": 25 + i, "value": h.id} for i, h in enumerate(waiters)]
    fired = stack.sql(
        "SELECT kind, count(*) AS n FROM continuum_events WHERE run_id = ANY(:ids) "
        "AND kind IN ('timer_fired', 'signal_received') GROUP BY kind",
        ids=ids,
    )
    assert {r.kind: r.n for r in fired} == {"timer_fired": 25, "signal_received": 25}
    # Nothing was left in Redis to wake them: the sweeps the new worker ran for beat sent every one.
    assert asleep > 0
    assert _sweep_dispatches(second) >= 25 + asleep


def _fired_per_timer(stack: Stack, ids: list[str]) -> dict[tuple[str, int], int]:
    rows = stack.sql(
        "SELECT run_id, command_id, count(*) AS n FROM continuum_events WHERE run_id = ANY(:ids) "
        "AND kind = 'timer_fired' GROUP BY run_id, command_id",
        ids=ids,
    )
    return {(r.run_id, r.command_id): r.n for r in rows}


def test_two_beats_sweeping_at_once_fire_every_timer_exactly_once(stack: Stack) -> None:
    stack.modules = MODULES
    stack.client()
    # No Redis wake-ups in the workers: every timer fires through a sweep, and sweeps re-send
    # runs not claimed within 0.2 s, so duplicate replay messages are the rule, not the exception.
    sweep_only = {
        "CONTINUUM_REDIS_URL": "",
        "CONTINUUM_SWEEP_INTERVAL": "0.3",
        "CONTINUUM_REDISPATCH_AFTER": "0.2",
        "CONTINUUM_WORKER_SWEEP_INTERVAL": "0",  # the dispatches counted below are all the beats' sweeps
    }
    worker = stack.worker(concurrency=4, **sweep_only)
    beats = [stack.beat(**sweep_only), stack.beat(**sweep_only)]
    runs_n = 12
    handles = [timers.start({"count": 4, "seconds": 0.5}) for _ in range(runs_n)]
    ids = [h.id for h in handles]
    wait_until(lambda: _states(stack, ids) == {"completed": runs_n}, 90, f"all {runs_n} runs to fire their 4 timers")
    assert [h.result(timeout=5) for h in handles] == [4] * runs_n
    scheduled = stack.sql(
        "SELECT run_id, command_id FROM continuum_events WHERE run_id = ANY(:ids) AND kind = 'timer_scheduled'",
        ids=ids,
    )
    assert len(scheduled) == 4 * runs_n
    assert _fired_per_timer(stack, ids) == {(r.run_id, r.command_id): 1 for r in scheduled}
    assert stack.sql("SELECT count(*) AS n FROM continuum_timers WHERE state <> 'fired'")[0].n == 0
    for beat in beats:  # both beats were sending sweeps the whole time
        assert len(re.findall(r"Sending due task continuum-sweep", beat.output())) >= 5, beat.output()[-2000:]
    assert _sweep_dispatches(worker) >= 4 * runs_n


def test_a_worker_killed_holding_a_lease_is_recovered_by_the_sweep(stack: Stack) -> None:
    stack.modules = MODULES
    stack.lease_ttl = 3.0
    stack.client()
    doomed = stack.worker(concurrency=2, **FAST_SWEEP)
    stack.beat(**FAST_SWEEP)
    # One run holds its replay lease in a blocked step; another holds an activity attempt (timeout 4 s).
    in_activity = hold_activity.start({"id": "act", "hold": 60})
    wait_until(lambda: _marks(stack, "holding:act"), 30, "the activity to start holding")
    in_step = hold_lease.start({"id": "step", "hold": 60})
    wait_until(lambda: _marks(stack, "holding:step"), 30, "the replay step to start holding")
    held = stack.sql("SELECT lease_token, lease_owner FROM continuum_runs WHERE id = :r", r=in_step.id)[0]
    assert held.lease_owner is not None
    doomed.kill()  # SIGKILL: no lease released, messages left unacked (redelivered only after an hour)
    stack.worker(concurrency=2, **FAST_SWEEP)
    assert in_step.result(timeout=60) == {"first": 5, "second": 6}
    assert in_activity.result(timeout=60) == "act"
    after = stack.sql("SELECT lease_token FROM continuum_runs WHERE id = :r", r=in_step.id)[0]
    assert after.lease_token > held.lease_token  # a new claim took the run over
    assert _marks(stack, "holding:step") == 1  # the body blocked once; the resumed run went straight on
    attempts = stack.sql("SELECT attempt, error FROM continuum_activity_tasks WHERE run_id = :r", r=in_activity.id)
    assert "ActivityTimeout" in attempts[0].error
    assert attempts[0].attempt == 2  # the sweep failed the dead attempt once; the retry finished
    assert _marks(stack, "holding:act") == 1
    assert stack.sql("SELECT count(*) AS n FROM test_effects WHERE key = 'act'")[0].n == 1


def _marks(stack: Stack, name: str) -> int:
    return int(stack.sql("SELECT count(*) AS n FROM test_marks WHERE name = :n", n=name)[0].n)
