"""``commit_step(inline=...)``: the stepper runs a lone activity itself, claimed in the decision's transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from continuum_celery.errors import LeaseLost
from continuum_celery.events import Kind
from continuum_celery.journal.base import Journal
from continuum_celery.journal.records import CompletedAttempt, Inline, StepStart

from .support import ACTIVITY, activity, claim, replay, start


def _assert_fold_refused(journal: Journal, step: StepStart, done: CompletedAttempt, state: Callable[[], Any]) -> None:
    """Folding ``done`` into a decision under ``step``'s lease raises LeaseLost and writes nothing."""
    before = state()
    with pytest.raises(LeaseLost):
        journal.commit_step(step.lease, [], None, wake_seq=step.wake_seq, child_versions={}, completed=done)
    assert state() == before


def test_the_inline_activity_is_claimed_by_the_lease_owner_and_not_dispatched(journal: Journal) -> None:
    start(journal)
    step = claim(journal, owner="w1")
    result = journal.commit_step(
        step.lease,
        [activity(1, 2, 3), activity(2, 4)],
        None,
        wake_seq=step.wake_seq + 1,  # something else woke the run meanwhile: the lease is given back
        child_versions={},
        inline=Inline(1),
    )
    assert not result.lease_kept
    assert result.inline_claim is not None
    assert (result.inline_claim.task_id, result.inline_claim.attempt, result.inline_claim.args) == (
        "run-1:1",
        1,
        [2, 3],
    )
    # The other activity still goes through Celery; the inline one is never dispatched.
    assert [d.id for d in result.dispatches] == ["run-1:2"]
    assert journal.claim_activity("run-1:1", 1, "w2") is None  # already running: a stray delivery does nothing
    done = journal.finish_activity(result.inline_claim, result=5)
    assert done.status == "completed" and done.dispatches == [replay()]
    outcome = claim(journal, after=step.run.last_seq + 2).events[-1]
    assert (outcome.kind, outcome.command_id, outcome.name, outcome.payload["result"]) == (
        Kind.ACTIVITY_COMPLETED,
        1,
        ACTIVITY,
        5,
    )


def test_without_inline_every_activity_is_dispatched(journal: Journal) -> None:
    start(journal)
    step = claim(journal)
    result = journal.commit_step(step.lease, [activity(1)], None, wake_seq=step.wake_seq, child_versions={})
    assert result.inline_claim is None
    assert [d.id for d in result.dispatches] == ["run-1:1"]


def test_a_kept_lease_folds_the_attempt_result_into_the_next_decision(journal: Journal, state) -> None:  # type: ignore[no-untyped-def]
    start(journal)
    step = claim(journal, owner="w1")
    first = journal.commit_step(
        step.lease, [activity(1, 2)], None, wake_seq=step.wake_seq, child_versions={}, inline=Inline(1)
    )
    assert first.lease_kept and first.inline_claim is not None and first.dispatches == []
    assert journal.get_run("run-1").state == "running"
    assert journal.begin_step("run-1", "w2", 30.0, 0) is None  # still held: nobody else steps it
    second = journal.commit_step(
        step.lease,
        [activity(2, 3)],
        None,
        wake_seq=step.wake_seq,
        child_versions={},
        inline=Inline(2),
        completed=CompletedAttempt(first.inline_claim, 1, {"v": 2}),
    )
    assert second.lease_kept and second.inline_claim is not None
    kinds = [(e.seq, e.kind, e.command_id) for e in journal.history("run-1")]
    assert kinds[-3:] == [
        (first.last_seq - 0, Kind.ACTIVITY_SCHEDULED, 1),
        (first.last_seq + 1, Kind.ACTIVITY_COMPLETED, 1),
        (first.last_seq + 2, Kind.ACTIVITY_SCHEDULED, 2),
    ]
    assert journal.history("run-1")[-2].payload == {"result": {"v": 2}, "attempts": 1}
    # Folding an attempt that is no longer this owner's (already recorded) is refused, and writes nothing.
    _assert_fold_refused(journal, step, CompletedAttempt(first.inline_claim, 1, {"v": 2}), state)


def test_a_fold_is_declined_when_input_reached_the_run_meanwhile(journal: Journal, state) -> None:  # type: ignore[no-untyped-def]
    start(journal)
    step = claim(journal, owner="w1")
    first = journal.commit_step(
        step.lease, [activity(1)], None, wake_seq=step.wake_seq, child_versions={}, inline=Inline(1)
    )
    assert first.lease_kept and first.inline_claim is not None
    journal.request_cancel("run-1")  # arrives while the attempt runs
    before = state()
    declined = journal.commit_step(
        step.lease,
        [activity(2)],
        None,
        wake_seq=step.wake_seq,
        child_versions={},
        inline=Inline(2),
        completed=CompletedAttempt(first.inline_claim, 1, 7),
    )
    assert declined.declined and declined.last_seq == first.last_seq
    assert state() == before


def test_a_takeover_retries_the_inline_attempt_of_the_lost_lease_at_once(journal: Journal, travel, state) -> None:  # type: ignore[no-untyped-def]
    """An inline attempt dies with its lease: the next claim retries it, not its (long) start-to-close timeout."""
    start(journal)
    step = claim(journal, owner="w1", ttl=30.0)
    retry = {"max_attempts": 3, "initial_interval": 0.0}
    first = journal.commit_step(
        step.lease,
        [activity(1, 2, retry=retry, timeout=600)],
        None,
        wake_seq=step.wake_seq,
        child_versions={},
        inline=Inline(1),
    )
    assert first.lease_kept and first.inline_claim is not None
    assert journal.begin_step("run-1", "w2", 30.0, 0) is None  # the lease still holds
    travel(31)  # w1 stopped renewing: its run lease expired, its attempt's timeout (600 s) is far off
    assert journal.sweep(batch=10, redispatch_after=30.0) == [replay()]  # the run is due again, not the attempt

    taken = claim(journal, owner="w2", ttl=30.0)
    assert taken.lease.token == step.lease.token + 1
    (retry,) = taken.dispatches
    assert (retry.kind, retry.id, retry.attempt) == ("activity", "run-1:1", 2)
    assert [e.kind for e in taken.events][-1] is Kind.ACTIVITY_SCHEDULED  # no outcome: the activity is retried
    # The old holder's result arrives late: refused, nothing written.
    _assert_fold_refused(journal, step, CompletedAttempt(first.inline_claim, 1, 3), state)
    retried = journal.claim_activity("run-1:1", 2, "w3")
    assert retried is not None and retried.attempt == 2


def test_a_takeover_leaves_an_activity_task_attempt_to_its_own_lease(journal: Journal) -> None:
    start(journal)
    step = claim(journal, owner="w1", ttl=30.0)
    journal.commit_step(step.lease, [activity(1, timeout=600)], None, wake_seq=step.wake_seq, child_versions={})
    running = journal.claim_activity("run-1:1", 1, "w2")  # a continuum.activity task runs it, not the replay task
    assert running is not None
    journal.send_signal("run-1", "nudge", None)  # wakes the run while the attempt runs
    taken = claim(journal, owner="w3")
    assert taken.dispatches == []
    assert journal.finish_activity(running, result=1).status == "completed"  # still that worker's to finish


def test_a_takeover_fails_an_inline_attempt_that_has_no_attempts_left(journal: Journal, travel) -> None:  # type: ignore[no-untyped-def]
    start(journal)
    step = claim(journal, owner="w1", ttl=30.0)
    journal.commit_step(
        step.lease, [activity(1, timeout=600)], None, wake_seq=step.wake_seq, child_versions={}, inline=Inline(1)
    )
    travel(31)
    taken = claim(journal, owner="w2")
    assert taken.dispatches == []  # nothing to retry, and the failed task wakes nobody: w2 holds the run
    failed = taken.events[-1]
    assert (failed.kind, failed.command_id) == (Kind.ACTIVITY_FAILED, 1)
    assert "lease expired" in failed.payload["error"]["message"] and "w1" in failed.payload["error"]["message"]
