"""Attempt liveness in the journal: heartbeats, heartbeat timeouts, cancels and runs that end under an attempt."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from continuum_celery.events import Kind, NewEvent
from continuum_celery.journal.base import Journal
from continuum_celery.journal.records import Inline, StepStart
from continuum_celery.replay import Fail

from .support import activity, claim, commit, new_run, start, timer

RETRY = {"max_attempts": 3, "initial_interval": 1.0, "backoff": 1.0}


def beating(cid: int, heartbeat_timeout: float, timeout: float = 300.0) -> NewEvent:
    cmd = activity(cid, retry=RETRY, timeout=timeout)
    return NewEvent(cmd.kind, cid, cmd.name, {**cmd.payload, "heartbeat_timeout": heartbeat_timeout})


def scheduled(journal: Journal, *commands: Any) -> None:
    start(journal)
    commit(journal, claim(journal), commands)


def test_heartbeat_details_reach_the_next_attempt(journal: Journal, travel: Callable[[float], None]) -> None:
    scheduled(journal, beating(1, heartbeat_timeout=10))
    first = journal.claim_activity("run-1:1", 1, "w1")
    assert first is not None and first.heartbeat_timeout == 10 and first.last_heartbeat is None
    assert journal.heartbeat("run-1:1", 1, {"rows": 1200}) == "running"
    assert journal.heartbeat("run-1:1", 1) == "running"  # no details: the last ones stay
    assert journal.finish_activity(first, error={"type": "Boom", "message": "x"}).status == "retry"
    assert journal.heartbeat("run-1:1", 1, {"rows": 1}) == "abandoned"  # that attempt is over
    travel(2)
    second = journal.claim_activity("run-1:1", 2, "w1")
    assert second is not None and second.last_heartbeat == {"rows": 1200}


def test_an_attempt_that_stops_heartbeating_is_failed_by_the_sweep_and_retried(
    journal: Journal, travel: Callable[[float], None]
) -> None:
    scheduled(journal, beating(1, heartbeat_timeout=10))
    assert journal.claim_activity("run-1:1", 1, "w1") is not None
    travel(6)
    assert journal.heartbeat("run-1:1", 1, {"at": 6}) == "running"  # pushes the lease 10 s on
    travel(6)
    assert [d.kind for d in journal.sweep(batch=10, redispatch_after=15)] == []  # beat 6 s ago: alive
    travel(5)
    [retry] = [d for d in journal.sweep(batch=10, redispatch_after=15) if d.kind == "activity"]
    assert (retry.id, retry.attempt) == ("run-1:1", 2)
    travel(2)
    second = journal.claim_activity("run-1:1", 2, "w1")
    assert second is not None and second.last_heartbeat == {"at": 6}


def test_a_cancel_tells_the_work_it_overtook_to_stop_but_not_cleanup(journal: Journal) -> None:
    scheduled(journal, activity(1, retry=RETRY))
    assert journal.claim_activity("run-1:1", 1, "w1") is not None
    journal.request_cancel("run-1")
    assert journal.heartbeat("run-1:1", 1, record=False) == "cancelled"
    step = claim(journal)
    assert Kind.CANCEL_REQUESTED in [e.kind for e in step.events]
    assert journal.heartbeat("run-1:1", 1) == "cancelled"  # still running, still overtaken
    commit(journal, step, [activity(2)])  # cleanup after the body caught RunCancelled
    assert journal.claim_activity("run-1:2", 1, "w1") is not None
    assert journal.heartbeat("run-1:2", 1) == "running"


def test_a_detached_inline_attempt_outlives_its_lease(journal: Journal) -> None:
    start(journal)
    step = claim(journal)
    result = journal.commit_step(
        step.lease, [activity(1, retry=RETRY)], None, wake_seq=step.wake_seq, child_versions={}, inline=Inline(1)
    )
    assert result.lease_kept and result.inline_claim is not None
    journal.detach_inline(result.inline_claim)
    journal.release(step.lease)
    claim(journal)  # the next claim does not count the detached attempt as orphaned
    assert journal.heartbeat("run-1:1", 1) == "running"
    assert journal.finish_activity(result.inline_claim, result=7).status == "completed"


def test_a_run_ending_abandons_its_attempts_in_flight(journal: Journal, state: Callable[[], Any]) -> None:
    scheduled(journal, activity(1, retry=RETRY))
    running = journal.claim_activity("run-1:1", 1, "w1")
    assert running is not None
    journal.send_signal("run-1", "go", 1)
    commit(journal, claim(journal), [], Fail({"type": "X", "message": "x"}))
    before = state()
    assert journal.heartbeat("run-1:1", 1, {"rows": 5}) == "abandoned"
    assert journal.finish_activity(running, result={"late": 1}).status == "stale"
    assert state() == before  # neither the heartbeat nor the late result wrote anything


def test_a_workflow_timeout_is_a_deadline_timer_that_wakes_the_run(
    journal: Journal, travel: Callable[[float], None]
) -> None:
    journal.create_run(new_run("run-1", None, timeout=60))
    step = claim(journal)
    assert step.events[0].payload["timeout"] == 60
    result = commit(journal, step, [timer(1, journal_later(step, 3600)), activity(2)])
    assert result.next_wakeup_at is not None and result.next_wakeup_at < journal_later(step, 61)
    assert journal.claim_activity("run-1:2", 1, "w1") is not None
    travel(61)
    assert journal.heartbeat("run-1:2", 1, record=False) == "cancelled"  # the body has yet to see it
    [timed_out] = [e for e in claim(journal).events if e.kind is Kind.RUN_TIMED_OUT]
    assert timed_out.command_id is None and "deadline" in timed_out.payload
    assert journal.heartbeat("run-1:2", 1, record=False) == "running"  # seen: what the body does next is its call


def journal_later(step: StepStart, seconds: float) -> datetime:
    return step.now + timedelta(seconds=seconds)


def test_schedule_to_close_bounds_all_attempts_together(journal: Journal, travel: Callable[[float], None]) -> None:
    cmd = activity(1, retry={"max_attempts": 5, "initial_interval": 4.0, "backoff": 1.0}, timeout=300)
    scheduled(journal, NewEvent(cmd.kind, 1, cmd.name, {**cmd.payload, "schedule_to_close": 10}))
    first = journal.claim_activity("run-1:1", 1, "w1")
    assert first is not None and first.schedule_to_close == 10
    assert first.close_in is not None and 9 < first.close_in <= 10
    travel(3)
    error = {"type": "Boom", "module": "x", "message": "down"}
    assert journal.finish_activity(first, error=error).status == "retry"  # 4 s back-off, 7 s left
    travel(4)
    second = journal.claim_activity("run-1:1", 2, "w1")
    assert second is not None and second.close_in is not None and second.close_in <= 3
    assert journal.finish_activity(second, error=error).status == "failed"  # the next retry would start too late
    [failed] = [e for e in claim(journal).events if e.kind is Kind.ACTIVITY_FAILED]
    assert failed.payload["error"]["type"] == "ActivityTimeout"
    assert "schedule_to_close of 10 s (2 attempt(s); last attempt: Boom: down)" in failed.payload["error"]["message"]
