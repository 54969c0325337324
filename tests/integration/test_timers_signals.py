"""Durable timers and signals through real ``celery worker`` processes, PostgreSQL, Redis (and RabbitMQ)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from continuum_celery import InvalidArgument, PayloadError, RunFinished, RunNotFound, get_run
from continuum_celery.client import JournalRunHandle
from continuum_celery.journal.records import NewRun
from continuum_celery.journal.sql import SQLJournal
from continuum_celery.notify import RedisNotifier
from tests.support.flows_time import collect, sleep_between, sleep_until
from tests.support.stack import ROOT, Stack, on_each_broker, wait_until

MODULES = ("tests.support.flows", "tests.support.flows_time")


@pytest.fixture
def tstack(stack: Stack) -> Stack:
    stack.modules = MODULES
    stack.client()
    return stack


@pytest.fixture
def rclient(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _kinds(stack: Stack, run_id: str) -> list[str]:
    return [r.kind for r in stack.sql("SELECT kind FROM continuum_events WHERE run_id = :r ORDER BY seq", r=run_id)]


def _run(stack: Stack, run_id: str) -> Any:
    return stack.sql("SELECT * FROM continuum_runs WHERE id = :r", r=run_id)[0]


def _event_at(stack: Stack, run_id: str, kind: str) -> datetime:
    rows = stack.sql("SELECT created_at FROM continuum_events WHERE run_id = :r AND kind = :k", r=run_id, k=kind)
    return rows[0].created_at


def _idle(stack: Stack, run_id: str, kind: str) -> bool:
    """The run is suspended after journaling ``kind``, and no message is queued or being worked on.

    acks_late keeps a message unacknowledged until its task returns; an ETA/countdown message
    would sit there until due.
    """
    return (
        kind in _kinds(stack, run_id)
        and _run(stack, run_id).state == "suspended"
        and stack.pending_messages() == 0
    )


# ---- timers --------------------------------------------------------------------------------


@on_each_broker
def test_sleeps_of_two_seconds_and_until_a_datetime_complete_and_an_hour_holds_nothing(
    tstack: Stack, rclient: Any
) -> None:
    tstack.worker()
    hour = sleep_between.start(3600)
    two = sleep_between.start(2)
    when = datetime.now(timezone.utc) + timedelta(seconds=2)
    until = sleep_until.start(when.isoformat())

    assert two.result(timeout=60) == {"first": 3, "second": 13}
    kinds = _kinds(tstack, two.id)
    assert kinds.count("timer_scheduled") == 1 and kinds.count("timer_fired") == 1
    assert kinds.index("activity_completed") < kinds.index("timer_scheduled") < kinds.index("timer_fired")
    timer = tstack.sql("SELECT fire_at, state FROM continuum_timers WHERE run_id = :r", r=two.id)[0]
    assert timer.state == "fired" and _event_at(tstack, two.id, "timer_fired") >= timer.fire_at  # never early

    assert datetime.fromisoformat(until.result(timeout=60)) >= when
    assert tstack.sql("SELECT fire_at FROM continuum_timers WHERE run_id = :r", r=until.id)[0].fire_at == when

    # The hour-long sleeper: suspended, no lease, no message anywhere, a wake-up row and a Redis member.
    wait_until(lambda: _idle(tstack, hour.id, "timer_scheduled"), 30, "the hour sleeper to go idle")
    run = _run(tstack, hour.id)
    assert run.lease_owner is None and run.lease_expires_at is None
    assert run.next_wakeup_at > datetime.now(timezone.utc) + timedelta(minutes=55)
    pending = tstack.sql("SELECT kind, state, fire_at FROM continuum_timers WHERE run_id = :r", r=hour.id)
    assert [(t.kind, t.state, t.fire_at) for t in pending] == [("sleep", "pending", run.next_wakeup_at)]
    members = list(rclient.zscan_iter(f"{tstack.key_prefix}wakeups", match=f"run|{hour.id}*"))
    assert len(members) == 1 and members[0][1] == run.next_wakeup_at.timestamp()


# ---- signals -------------------------------------------------------------------------------


def _signals(stack: Stack, run_id: str) -> list[Any]:
    return stack.sql("SELECT * FROM continuum_signals WHERE run_id = :r ORDER BY id", r=run_id)


def _cli_signal(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "continuum"), "-A", "tests.support.app", "signal", *args],
        cwd=ROOT,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@on_each_broker
def test_signals_sent_before_the_wait_during_it_and_a_wait_that_times_out(tstack: Stack, rclient: Any) -> None:
    tstack.worker()
    # Before: three signals arrive while the run still sleeps; it waits for them afterwards.
    before = collect.start({"name": "item", "sleep": 1.5, "count": 3, "last_timeout": 0.5})
    during = collect.start({"name": "go", "count": 1})
    times_out = collect.start({"name": "never", "count": 0, "last_timeout": 1})
    wait_until(lambda: "timer_scheduled" in _kinds(tstack, before.id), 30, "the first run to sleep")
    for payload in ({"n": 1}, "two", [3]):
        before.signal("item", payload)

    wait_until(lambda: _idle(tstack, during.id, "signal_wait"), 30, "the second run to wait")
    assert _run(tstack, during.id).next_wakeup_at is None  # no timeout: only a signal wakes it
    sent = _cli_signal(tstack, during.id, "go", '{"via": "cli"}')
    assert sent.returncode == 0, sent.stderr
    assert "stored in the inbox" in sent.stdout

    assert before.result(timeout=60) == {"got": [{"n": 1}, "two", [3]], "timed_out": True}
    inbox = _signals(tstack, before.id)
    assert max(s.created_at for s in inbox) < _event_at(tstack, before.id, "signal_wait")  # kept, not dropped
    received = tstack.sql(
        "SELECT seq FROM continuum_events WHERE run_id = :r AND kind = 'signal_received' ORDER BY seq", r=before.id
    )
    assert [s.consumed_seq for s in inbox] == [e.seq for e in received]  # each once, in arrival order
    assert _kinds(tstack, before.id).count("signal_timed_out") == 1  # the fourth wait found none left

    assert during.result(timeout=60) == {"got": [{"via": "cli"}], "timed_out": False}
    assert times_out.result(timeout=60) == {"got": [], "timed_out": True}
    kinds = _kinds(tstack, times_out.id)
    assert kinds.count("signal_timed_out") == 1 and "signal_received" not in kinds

    # Refused, with nothing written: a finished run, an unknown run, a bad payload or name.
    count = tstack.sql("SELECT count(*) AS n FROM continuum_signals")[0].n
    with pytest.raises(RunFinished, match="is completed"):
        during.signal("go", 1)
    refused = _cli_signal(tstack, during.id, "go", "1")
    assert refused.returncode == 1 and "completed" in refused.stderr + refused.stdout
    with pytest.raises(RunNotFound, match="no run with id 'no-such-run'"):
        get_run("no-such-run")
    with pytest.raises(RunNotFound, match="no run with id 'no-such-run'"):
        JournalRunHandle(tstack.client().client, "no-such-run").signal("x", 1)
    with pytest.raises(PayloadError):
        during.signal("go", {"not": object()})
    with pytest.raises(InvalidArgument, match="signal name"):
        during.signal("", 1)
    assert tstack.sql("SELECT count(*) AS n FROM continuum_signals")[0].n == count


# ---- one dispatch per wake, and a result that waits on the notification ------------------------


def test_many_signals_make_one_replay_message_and_result_wakes_on_the_notification(tstack: Stack, rclient: Any) -> None:
    first = tstack.worker()
    handle = collect.start({"name": "n", "count": 5})
    wait_until(lambda: _idle(tstack, handle.id, "signal_wait"), 30, "the run to wait")
    first.kill()
    for i in range(5):
        handle.signal("n", i)
    # The first signal dispatched a replay; the four after it found one already on its way.
    assert tstack.pending_messages() == 1
    assert _run(tstack, handle.id).dispatched_at is not None

    engine = tstack.client()
    # No fallback poll within the test's time: only the completion notification can end the wait early.
    engine.notifier = RedisNotifier(rclient, tstack.key_prefix, fallback_interval=3600)
    seen: list[str] = []
    get = engine.journal.get_run

    def recording_get_run(run_id: str) -> Any:
        record = get(run_id)
        seen.append(record.state)
        return record

    engine.journal.get_run = recording_get_run
    tstack.worker(wait=False)  # boots while result() waits
    assert handle.result(timeout=60) == {"got": [0, 1, 2, 3, 4], "timed_out": False}
    assert seen[0] != "completed" and seen[-1] == "completed"
    # The state before waiting, the check after subscribing, one after the notification, the final read.
    assert len(seen) <= 4, seen


def test_a_signal_racing_a_claim_leaves_the_run_claimable(clean_pg: str) -> None:
    # A replay's claim transaction starts (its now() is fixed then); before its UPDATE runs, a signal
    # is stored and committed. The run was already due and dispatched, so the signal sends nothing:
    # the claim must still succeed, or the run waits for the sweep with its dispatch spent.
    # (The UPDATE below is begin_step's claim condition for a suspended run.)
    journal = SQLJournal(clean_pg)
    try:
        journal.create_run(NewRun(id="r1", workflow="wf", version_hash="h", version=1, input=None))
        with journal.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE continuum_runs SET state = 'suspended', next_wakeup_at = now() - interval '1 s'")
            )
        claim = journal.engine.connect()
        try:
            claim.begin()
            claim.execute(sa.text("SELECT now()"))  # the claim's transaction time
            assert journal.send_signal("r1", "go", 1) == []  # a dispatch is already on its way
            claimed = claim.execute(
                sa.text(
                    "UPDATE continuum_runs SET state = 'running' WHERE id = 'r1' "
                    "AND state = 'suspended' AND next_wakeup_at <= now() RETURNING id"
                )
            ).all()
            claim.rollback()
        finally:
            claim.close()
        assert [r.id for r in claimed] == ["r1"]
    finally:
        journal.close()
