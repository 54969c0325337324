"""Faults with real processes: a worker SIGKILLed mid-activity, workers racing on runs, a step
that outlives its lease TTL. PostgreSQL, Redis and ``celery worker`` subprocesses throughout.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
import sqlalchemy as sa

from continuum_celery.errors import LeaseLost
from continuum_celery.events import Kind, NewEvent
from continuum_celery.journal.records import Lease, NewRun, StepStart
from continuum_celery.journal.schema import metadata
from continuum_celery.journal.sql import SQLJournal
from continuum_celery.replay import Complete
from tests.support.flows import add_chain, effects_flow, slow_step
from tests.support.stack import Stack, wait_until


def _history_ok(stack: Stack, run_id: str) -> list[str]:
    """Assert the run's events are numbered 1..n and it completed exactly once; return the kinds."""
    rows = stack.sql("SELECT seq, kind FROM continuum_events WHERE run_id = :r ORDER BY seq", r=run_id)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1)), f"gap or duplicate in run {run_id}"
    kinds = [r.kind for r in rows]
    assert kinds.count("run_completed") == 1 and kinds[-1] == "run_completed", kinds
    return kinds


# ---- a worker killed while an activity runs -----------------------------------------------------


@pytest.mark.parametrize(("path", "beat"), [("inline", True), ("inline", False), ("celery", False)])
def test_a_worker_killed_mid_activity_is_replaced_and_the_effect_happens_once(
    stack: Stack, path: str, beat: bool
) -> None:
    """Without beat, the new worker's own sweep finds the dead worker's run (or attempt) and resumes it."""
    stack.lease_ttl = 6.0
    stack.extra_env["CONTINUUM_INLINE_ACTIVITIES"] = "1" if path == "inline" else "0"
    stack.client()
    first = stack.worker()
    if beat:
        stack.beat()
    spec = {"id": "crash", "steps": 1, "hold": 2.5}
    handle = effects_flow.start(spec)

    def holding() -> int:
        return len(stack.sql("SELECT id FROM test_marks WHERE name = 'holding:crash:0'"))

    wait_until(holding, 60, "the activity to start holding")
    first.kill()
    # The attempt died before its effect: nothing written, the task row still claimed by the dead worker.
    assert stack.sql("SELECT key FROM test_effects") == []
    (task,) = stack.sql("SELECT state, attempt FROM continuum_activity_tasks WHERE run_id = :r", r=handle.id)
    assert (task.state, task.attempt) == ("running", 1)

    stack.worker()
    restarted = time.monotonic()
    assert handle.result(timeout=90) == ["crash:0"]
    print(f"\n[{path}, beat={beat}] new worker ready -> run completed: {time.monotonic() - restarted:.1f} s")

    assert [r.key for r in stack.sql("SELECT key FROM test_effects")] == ["crash:0"]
    (task,) = stack.sql("SELECT state, attempt FROM continuum_activity_tasks WHERE run_id = :r", r=handle.id)
    assert task.state == "completed"
    assert task.attempt > 1, "the killed attempt should have timed out and been retried"
    assert holding() == task.attempt  # every attempt that started is accounted for
    kinds = _history_ok(stack, handle.id)
    assert kinds.count("activity_scheduled") == 1 and kinds.count("activity_completed") == 1

    # The idempotency key holds across runs: a second run gets the stored result, the activity never runs.
    again = effects_flow.start(spec, run_id=f"again-{uuid.uuid4().hex[:6]}")
    assert again.result(timeout=60) == ["crash:0"]
    assert holding() == task.attempt
    (reused,) = stack.sql("SELECT state, owner FROM continuum_activity_tasks WHERE run_id = :r", r=again.id)
    assert (reused.state, reused.owner) == ("completed", None)
    assert len(stack.sql("SELECT key FROM test_effects")) == 1


def test_an_inline_attempt_dies_with_its_run_lease_not_its_timeout(stack: Stack) -> None:
    """A replay task killed while it runs an activity inline: the next claim retries the attempt at once.

    The activity's start-to-close timeout is 600 s; only the run's lease (a few seconds here)
    can bring the attempt back within the result's 90 s.
    """
    stack.lease_ttl = 3.0
    stack.client()
    first = stack.worker(CONTINUUM_INLINE_ACTIVITIES="1")
    stack.beat()
    spec = {"id": "orphan", "steps": 1, "hold": 30.0, "patient": True}  # the first attempt holds 30 s
    handle = effects_flow.start(spec)

    def holding() -> int:
        return len(stack.sql("SELECT id FROM test_marks WHERE name = 'holding:orphan:0'"))

    wait_until(holding, 60, "the activity to start holding")
    (task,) = stack.sql("SELECT run_lease_token, owner FROM continuum_activity_tasks WHERE run_id = :r", r=handle.id)
    assert task.run_lease_token == 1, "the attempt runs inline, under the run's first lease"
    first.kill()
    stack.worker()
    assert handle.result(timeout=90) == ["orphan:0"]

    (retried,) = stack.sql(
        "SELECT attempt, error FROM continuum_activity_tasks WHERE run_id = :r AND command_id = 1", r=handle.id
    )
    assert retried.attempt == 2
    assert "lease expired" in retried.error and task.owner in retried.error
    assert [r.key for r in stack.sql("SELECT key FROM test_effects WHERE key LIKE 'orphan:%'")] == ["orphan:0"]
    _history_ok(stack, handle.id)


# ---- two workers racing at the journal level -----------------------------------------------------


def _new_run(journal: SQLJournal) -> str:
    run_id = f"race-{uuid.uuid4().hex[:10]}"
    journal.create_run(NewRun(id=run_id, workflow="tests.race", version_hash="h" * 16, version=1, input={"n": 1}))
    return run_id


def _snapshot(engine: sa.Engine, run_id: str) -> dict[str, Any]:
    """Row counts of every continuum table, and the run row itself."""
    with engine.connect() as conn:
        count = sa.select(sa.func.count())
        counts = {t.name: conn.execute(count.select_from(t)).scalar() for t in metadata.sorted_tables}
        run = conn.execute(sa.text("SELECT * FROM continuum_runs WHERE id = :r"), {"r": run_id}).one()
    return {"counts": counts, "run": tuple(run)}


def _scheduled(command_id: int) -> NewEvent:
    payload = {"args": [1, 2], "kwargs": {}, "retry": {"max_attempts": 1}}
    return NewEvent(Kind.ACTIVITY_SCHEDULED, command_id, "tests.support.flows.add", payload)


def _together(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released at the same instant; return each one's value or exception."""
    barrier = threading.Barrier(len(calls))
    out: list[Any] = [None] * len(calls)

    def go(i: int, call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            out[i] = call()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=go, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


@pytest.fixture
def two_journals(clean_pg: str) -> Any:
    a, b = SQLJournal(clean_pg), SQLJournal(clean_pg)
    yield a, b
    a.close()
    b.close()


def test_concurrent_claims_have_exactly_one_lease_holder(two_journals: tuple[SQLJournal, SQLJournal]) -> None:
    a, b = two_journals
    for _ in range(20):
        run_id = _new_run(a)
        got = _together(partial(a.begin_step, run_id, "A", 30, 0), partial(b.begin_step, run_id, "B", 30, 0))
        winners = [s for s in got if isinstance(s, StepStart)]
        assert len(winners) == 1 and got.count(None) == 1, got
        run = a.get_run(run_id)
        assert (run.state, run.lease_token, run.lease_owner) == ("running", 1, winners[0].lease.owner)


def test_a_stale_lease_writes_nothing_and_raises_lease_lost(two_journals: tuple[SQLJournal, SQLJournal]) -> None:
    a, b = two_journals
    run_id = _new_run(a)
    stale = a.begin_step(run_id, "A", 0.001, 0)  # A's lease expires at once, as if A stalled
    assert stale is not None and stale.lease.token == 1
    fresh = wait_until(lambda: b.begin_step(run_id, "B", 30, 0), 10, "B to take over the expired lease")
    assert fresh.lease.token == 2

    before = _snapshot(a.engine, run_id)
    writes: list[Callable[[], Any]] = [
        lambda: a.commit_step(stale.lease, [_scheduled(1)], None, wake_seq=stale.wake_seq, child_versions={}),
        lambda: a.commit_step(stale.lease, [], Complete({"by": "A"}), wake_seq=stale.wake_seq, child_versions={}),
        lambda: a.renew(stale.lease, 30),
        lambda: a.release(stale.lease),
        lambda: a.release(Lease(run_id, 99, "A"), stuck_reason="nondeterminism"),
    ]
    for write in writes:
        with pytest.raises(LeaseLost, match="stale|another worker"):
            write()
    assert _snapshot(a.engine, run_id) == before

    # Both at once, each on its own connection: the fresh holder's write lands, the stale one's does not.
    got = _together(
        lambda: a.commit_step(stale.lease, [_scheduled(1)], None, wake_seq=stale.wake_seq, child_versions={}),
        lambda: b.commit_step(fresh.lease, [_scheduled(1)], None, wake_seq=fresh.wake_seq, child_versions={}),
    )
    assert isinstance(got[0], LeaseLost), got
    assert got[1].last_seq == 2
    after = _snapshot(a.engine, run_id)["counts"]
    assert after["continuum_events"] == before["counts"]["continuum_events"] + 1
    assert after["continuum_activity_tasks"] == before["counts"]["continuum_activity_tasks"] + 1
    assert [(e.seq, e.kind) for e in a.history(run_id)] == [(1, Kind.RUN_STARTED), (2, Kind.ACTIVITY_SCHEDULED)]
    run = a.get_run(run_id)
    assert (run.state, run.lease_token, run.last_seq) == ("suspended", 2, 2)


# ---- two worker processes on one queue -----------------------------------------------------------


def test_two_worker_processes_on_one_queue_complete_every_run_once(stack: Stack) -> None:
    client = stack.client()
    workers = [stack.worker(concurrency=2), stack.worker(concurrency=2)]
    handles = [add_chain.start(3) for _ in range(20)]
    # Duplicate deliveries make both workers go for the same runs, not just share them out.
    for handle in handles:
        for _ in range(2):
            client.dispatcher.replay(handle.id)
    for handle in handles:
        assert handle.result(timeout=120) == 3
    for handle in handles:
        kinds = _history_ok(stack, handle.id)
        assert kinds.count("activity_completed") == 3
    logs = [w.output() for w in workers]
    assert all("continuum.replay" in log and "succeeded" in log for log in logs), "both workers should take part"
    assert any("'skipped'" in log for log in logs), "some duplicate delivery should have found nothing to do"
    tasks = stack.sql("SELECT attempt, state FROM continuum_activity_tasks")
    assert len(tasks) == 60 and {(t.attempt, t.state) for t in tasks} == {(1, "completed")}


# ---- lease renewal ----------------------------------------------------------------------------------


def test_a_step_longer_than_the_lease_ttl_keeps_its_lease(stack: Stack) -> None:
    stack.lease_ttl = 3.0
    stack.client()
    # Activities go through Celery here, so the claims below are one per step (inline ones keep a lease).
    worker = stack.worker(concurrency=2, CONTINUUM_INLINE_ACTIVITIES="0")  # an idle pool process would take over
    beat = stack.beat()  # and the sweep would hand it the run
    handle = slow_step.start(2.5 * stack.lease_ttl)

    def lease() -> Any:
        (row,) = stack.sql(
            "SELECT state, lease_token, lease_expires_at, now() AS db_now FROM continuum_runs WHERE id = :r",
            r=handle.id,
        )
        return row

    # Claim 2 is the slow step (claim 1 scheduled the first activity).
    first = wait_until(lambda: (r := lease()).state == "running" and r.lease_token == 2 and r, 60, "the slow step")

    def outlived_its_first_lease() -> Any:
        row = lease()
        assert (row.state, row.lease_token) == ("running", 2), f"the slow step lost or ended its lease: {row}"
        return row.db_now > first.lease_expires_at + timedelta(seconds=1) and row

    held = wait_until(outlived_its_first_lease, 60, "the step to outlive its first lease")
    assert held.lease_expires_at > first.lease_expires_at  # renewed, not merely unclaimed

    assert handle.result(timeout=90) == 4
    _history_ok(stack, handle.id)
    # Three claims: start, after each activity. A takeover would have added one.
    assert lease().lease_token == 3
    logs = worker.output() + beat.output()
    assert "lease_lost" not in logs and "LeaseLost" not in logs


def test_inline_steps_that_together_outlast_the_lease_ttl_keep_one_lease(stack: Stack) -> None:
    """Steps that keep their lease leave its expiry alone: the renewer alone must carry it past the TTL."""
    stack.lease_ttl = 3.0
    stack.client()
    # Two pool processes: an idle one would take over an expired lease.
    worker = stack.worker(concurrency=2, CONTINUUM_INLINE_ACTIVITIES="1")
    beat = stack.beat()  # and the sweep would hand it the run
    spec = {"id": "long-held", "steps": 6, "hold": 0.8}  # each step short, 4.8 s together
    handle = effects_flow.start(spec)
    assert handle.result(timeout=90) == [f"long-held:{i}" for i in range(6)]

    (run,) = stack.sql("SELECT lease_token FROM continuum_runs WHERE id = :r", r=handle.id)
    assert run.lease_token == 1, "one claim ran every step; a takeover would have added one"
    tasks = stack.sql("SELECT DISTINCT attempt FROM continuum_activity_tasks WHERE run_id = :r", r=handle.id)
    assert [t.attempt for t in tasks] == [1]
    assert len(stack.sql("SELECT key FROM test_effects WHERE key LIKE 'long-held:%'")) == 6
    _history_ok(stack, handle.id)
    logs = worker.output() + beat.output()
    assert "lease_lost" not in logs and "LeaseLost" not in logs
