"""Invariant 4: an activity attempt completes at most once; retries are rows with ``retry_at``; idempotency keys."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from continuum_celery.events import Kind, NewEvent
from continuum_celery.journal.base import Journal
from continuum_celery.journal.records import ActivityOutcome, Dispatch
from continuum_celery.replay import Fail

from .support import ACTIVITY, activity, claim, commit, race, replay, start

ERROR = {"type": "ConnectionError", "module": "builtins", "message": "flaky"}
RETRY = {"max_attempts": 3, "initial_interval": 10.0, "backoff": 2.0, "max_interval": 15.0}


def schedule(journal: Journal, *commands: Any, run_id: str = "run-1") -> list[Dispatch]:
    start(journal, run_id)
    return commit(journal, claim(journal, run_id), commands).dispatches


def assert_due(due: datetime | None, before: datetime, after: datetime, delay: float) -> None:
    """``due`` is ``delay`` seconds after some moment of the call (a second of slack for the database's clock)."""
    assert due is not None
    slack = timedelta(seconds=1)
    assert before - slack <= due - timedelta(seconds=delay) <= after + slack


def test_an_attempt_is_claimed_once_and_finishes_once(journal: Journal, state: Callable[[], Any]) -> None:
    assert schedule(journal, activity(1, 2, 3)) == [Dispatch("activity", "run-1:1", attempt=1, label=ACTIVITY)]
    assert journal.claim_activity("run-1:1", 2, "w1") is None  # no such attempt yet
    first = journal.claim_activity("run-1:1", 1, "w1")
    assert first is not None
    assert (first.run_id, first.kind, first.name, first.args, first.attempt) == (
        "run-1",
        "activity",
        ACTIVITY,
        [2, 3],
        1,
    )
    assert journal.claim_activity("run-1:1", 1, "w2") is None  # a duplicate delivery
    done = journal.finish_activity(first, result={"sum": 5})
    assert done.status == "completed" and done.dispatches == [replay()]
    before = state()
    assert journal.finish_activity(first, result={"sum": 6}).status == "stale"
    assert journal.finish_activity(first, error=ERROR).status == "stale"
    assert journal.claim_activity("run-1:1", 1, "w3") is None
    assert state() == before
    outcome = claim(journal).events[-1]
    assert (outcome.kind, outcome.command_id, outcome.name) == (Kind.ACTIVITY_COMPLETED, 1, ACTIVITY)
    assert outcome.payload == {"result": {"sum": 5}, "attempts": 1}


def test_concurrent_deliveries_of_one_attempt_have_one_winner(journal: Journal) -> None:
    schedule(journal, activity(1))
    claims = race(4, lambda k: journal.claim_activity("run-1:1", 1, f"w{k}"))
    won = [c for c in claims if c is not None]
    assert len(claims) == 4 and len(won) == 1
    outcomes = race(3, lambda k: journal.finish_activity(won[0], result=k).status)
    assert sorted(outcomes) == ["completed", "stale", "stale"]


def test_retries_wait_out_their_backoff_then_fail_for_good(
    journal: Journal, travel: Callable[[float], None], journal_now: Callable[[], datetime]
) -> None:
    schedule(journal, activity(1, retry=RETRY))
    first = journal.claim_activity("run-1:1", 1, "w1")
    assert first is not None and first.max_attempts == 3 and first.retry_policy["initial_interval"] == 10.0
    before = journal_now()
    retry = journal.finish_activity(first, error=ERROR)
    assert retry.status == "retry" and len(retry.dispatches) == 1
    assert retry.dispatches[0].attempt == 2 and retry.dispatches[0].id == "run-1:1"
    assert_due(retry.dispatches[0].due, before, journal_now(), 10.0)
    assert journal.claim_activity("run-1:1", 2, "w1") is None  # early: the back-off is not over
    assert journal.claim_activity("run-1:1", 1, "w1") is None  # the old attempt is gone
    assert journal.begin_step("run-1", "w1", 30, 0) is None  # a retry does not wake the run

    travel(11)
    second = journal.claim_activity("run-1:1", 2, "w1")
    assert second is not None and second.attempt == 2
    before = journal_now()
    retry = journal.finish_activity(second, error=ERROR)
    assert_due(retry.dispatches[0].due, before, journal_now(), 15.0)  # 10 * 2 = 20, capped at 15

    travel(16)
    third = journal.claim_activity("run-1:1", 3, "w1")
    assert third is not None
    last = {**ERROR, "message": "still down"}
    failed = journal.finish_activity(third, error=last)
    assert failed.status == "failed" and failed.dispatches == [replay()]
    outcome = claim(journal).events[-1]
    assert (outcome.kind, outcome.command_id) == (Kind.ACTIVITY_FAILED, 1)
    assert outcome.payload == {"error": last, "attempts": 3}


def test_a_non_retryable_error_fails_at_once(journal: Journal) -> None:
    schedule(journal, activity(1, retry=RETRY))
    attempt = journal.claim_activity("run-1:1", 1, "w1")
    assert attempt is not None
    assert journal.finish_activity(attempt, error=ERROR, retryable=False).status == "failed"
    assert journal.claim_activity("run-1:1", 2, "w1") is None
    assert claim(journal).events[-1].payload == {"error": ERROR, "attempts": 1}


def test_a_late_finish_after_the_sweep_expired_the_attempt_is_stale(
    journal: Journal, travel: Callable[[float], None], state: Callable[[], Any]
) -> None:
    schedule(journal, activity(1, retry={**RETRY, "initial_interval": 0.0}, timeout=5))
    slow = journal.claim_activity("run-1:1", 1, "w-slow")
    assert slow is not None and slow.timeout == 5
    assert journal.sweep(batch=10, redispatch_after=60) == []  # still within its timeout
    travel(6)
    swept = journal.sweep(batch=10, redispatch_after=60)
    assert [(d.kind, d.id, d.attempt) for d in swept] == [("activity", "run-1:1", 2)]
    before = state()
    assert journal.finish_activity(slow, result="too late").status == "stale"
    assert state() == before
    second = journal.claim_activity("run-1:1", 2, "w2")
    assert second is not None
    assert journal.finish_activity(second, result="on time").status == "completed"
    outcome = claim(journal).events[-1]
    assert outcome.payload == {"result": "on time", "attempts": 2}


def test_a_timed_out_last_attempt_fails_the_activity(journal: Journal, travel: Callable[[float], None]) -> None:
    schedule(journal, activity(1, timeout=5))
    attempt = journal.claim_activity("run-1:1", 1, "w-dead")
    assert attempt is not None
    travel(6)
    assert journal.sweep(batch=10, redispatch_after=60) == [replay()]
    error = claim(journal).events[-1].payload["error"]
    assert error["type"] == "ActivityTimeout" and "w-dead" in error["message"]


def test_an_idempotency_key_reuses_the_stored_result_across_runs(journal: Journal) -> None:
    schedule(journal, activity(1, 7, key="charge-7"), run_id="a")
    attempt = journal.claim_activity("a:1", 1, "w1")
    assert attempt is not None and attempt.idempotency_key == "charge-7"
    journal.finish_activity(attempt, result={"charged": 7})

    start(journal, "b")
    result = commit(journal, claim(journal, "b"), [activity(1, 7, key="charge-7")])
    assert result.dispatches == [] and result.runnable_again  # no new attempt: the result is known
    assert journal.claim_activity("b:1", 1, "w1") is None
    outcome = claim(journal, "b").events[-1]
    assert (outcome.kind, outcome.command_id) == (Kind.ACTIVITY_COMPLETED, 1)
    assert outcome.payload == {"result": {"charged": 7}, "attempts": 1}

    start(journal, "c")
    other = commit(journal, claim(journal, "c"), [activity(1, 7, key="charge-8")])
    assert other.dispatches == [Dispatch("activity", "c:1", attempt=1, label=ACTIVITY)]


def test_a_failed_attempt_stores_no_result_under_its_key(journal: Journal) -> None:
    schedule(journal, activity(1, key="k-fail"), run_id="a")
    attempt = journal.claim_activity("a:1", 1, "w1")
    assert attempt is not None
    assert journal.finish_activity(attempt, error=ERROR).status == "failed"
    start(journal, "b")
    assert commit(journal, claim(journal, "b"), [activity(1, key="k-fail")]).dispatches != []


def test_retry_request_runs_waiting_attempts_now(journal: Journal) -> None:
    schedule(journal, activity(1, retry={**RETRY, "initial_interval": 3600.0, "max_interval": 3600.0}))
    attempt = journal.claim_activity("run-1:1", 1, "w1")
    assert attempt is not None
    journal.finish_activity(attempt, error=ERROR)
    assert journal.claim_activity("run-1:1", 2, "w1") is None
    dispatches = journal.request_retry("run-1", "operator")
    assert Dispatch("activity", "run-1:1", attempt=2, label=ACTIVITY) in dispatches
    assert journal.history("run-1")[-1].payload["activities"] == [{"activity": ACTIVITY, "attempt": 2}]
    assert journal.claim_activity("run-1:1", 2, "w1") is not None


@pytest.mark.parametrize("kind", ["activity", "compensation"])
def test_claims_carry_the_run_and_the_compensated_result(journal: Journal, kind: str) -> None:
    start(journal, trace_context={"traceparent": "00-t-s-01"})
    step = claim(journal)
    cmd = activity(1, "x")
    if kind == "compensation":
        cmd = NewEvent(
            Kind.COMPENSATION_SCHEDULED, 1, ACTIVITY, {**cmd.payload, "result": {"paid": 1}, "for_command": 9}
        )
    commit(journal, step, [cmd])
    got = journal.claim_activity("run-1:1", 1, "w1")
    assert got is not None and got.kind == kind and got.args == ["x"]
    assert got.workflow == step.run.workflow and got.trace_context == {"traceparent": "00-t-s-01"}
    assert got.compensated_result == ({"paid": 1} if kind == "compensation" else None)


def test_a_cancel_stops_retries_of_work_it_overtook_but_not_of_cleanup(journal: Journal) -> None:
    schedule(journal, activity(1, retry=RETRY))
    running = journal.claim_activity("run-1:1", 1, "w1")
    assert running is not None
    journal.request_cancel("run-1")
    assert journal.finish_activity(running, error=ERROR).status == "failed"  # no retry: the run is stopping
    step = claim(journal)
    assert [e.kind for e in step.events][-2:] == [Kind.CANCEL_REQUESTED, Kind.ACTIVITY_FAILED]
    commit(journal, step, [activity(2, retry=RETRY)])  # the body caught RunCancelled and cleans up
    cleanup = journal.claim_activity("run-1:2", 1, "w1")
    assert cleanup is not None
    assert journal.finish_activity(cleanup, error=ERROR).status == "retry"


@pytest.mark.parametrize("late", ["failure", "success"])
def test_an_attempt_ending_after_its_run_ended_is_dropped_not_retried(journal: Journal, late: str) -> None:
    schedule(journal, activity(1, retry=RETRY, key="k-late"))
    running = journal.claim_activity("run-1:1", 1, "w1")
    assert running is not None
    journal.send_signal("run-1", "go", 1)  # wakes the run, which then fails while the attempt still runs
    commit(journal, claim(journal), [], Fail(ERROR))
    # The run's end abandoned the attempt: its heartbeat says so, and its late end is not recorded.
    assert journal.heartbeat("run-1:1", 1, {"rows": 1}) == "abandoned"
    ended = journal.finish_activity(running, error=ERROR if late == "failure" else None, result={"late": True})
    assert ended == ActivityOutcome("stale")
    assert journal.get_run("run-1").state == "failed"
    assert journal.claim_activity("run-1:1", 2, "w1") is None  # never retried
    # Nothing stored under the key: another run scheduling it with that key runs the activity.
    assert [d.kind for d in schedule(journal, activity(1, key="k-late"), run_id="run-2")] == ["activity"]
