"""Invariant 3 (a terminal run never changes), starting runs idempotently, cancel and continue-as-new."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from continuum_celery.errors import InvalidArgument, LeaseLost, RunConflict, RunFinished, RunNotFound
from continuum_celery.events import Kind
from continuum_celery.journal.base import Journal
from continuum_celery.replay import Cancelled, Complete, ContinueAsNew, Fail, Outcome

from .support import WORKFLOW, activity, child, claim, commit, new_run, replay, start, timer

ERROR = {"type": "ValueError", "module": "builtins", "message": "boom"}


def test_create_run_is_idempotent_on_id_and_input(journal: Journal, state: Callable[[], Any]) -> None:
    first, created = journal.create_run(new_run("r1", {"a": 1, "b": [1, 2]}))
    assert created and first.state == "pending" and first.last_seq == 1 and first.correlation_id == "r1"
    again, created_again = journal.create_run(new_run("r1", {"b": [1, 2], "a": 1}))  # same JSON, other key order
    assert not created_again
    assert again == first
    assert [e.kind for e in journal.history("r1")] == [Kind.RUN_STARTED]
    assert journal.history("r1")[0].payload == {
        "input": {"a": 1, "b": [1, 2]},
        "workflow": WORKFLOW,
        "version_hash": "h1",
    }

    before = state()
    with pytest.raises(RunConflict) as conflict:
        journal.create_run(new_run("r1", {"a": 2}))
    assert conflict.value.run_id == "r1" and "another input" in str(conflict.value)
    with pytest.raises(RunConflict):
        journal.create_run(new_run("r1", {"a": 1, "b": [1, 2]}, workflow="tests.other"))
    assert state() == before


def test_unknown_runs(journal: Journal) -> None:
    with pytest.raises(RunNotFound):
        journal.get_run("nope")
    with pytest.raises(RunNotFound):
        journal.send_signal("nope", "s", 1)
    with pytest.raises(RunNotFound):
        journal.request_cancel("nope")
    assert journal.begin_step("nope", "w1", 30, 0) is None
    assert journal.history("nope") == []


@pytest.mark.parametrize(
    ("outcome", "final"),
    [
        (Complete({"ok": True}), "completed"),
        (Fail(ERROR), "failed"),
        (Cancelled(ERROR), "cancelled"),
        (ContinueAsNew({"n": 2}), "continued"),
    ],
)
def test_a_terminal_run_never_changes_again(
    journal: Journal, state: Callable[[], Any], outcome: Outcome, final: str
) -> None:
    start(journal)
    step = claim(journal)
    result = commit(journal, step, [activity(1)], outcome, continue_version=("h2", 2))
    assert result.finished_state == final
    record = journal.get_run("run-1")
    assert record.terminal and record.state == final and record.lease_owner is None
    before = state()

    for second in (Complete({"ok": False}), Fail(ERROR)):
        with pytest.raises(LeaseLost):
            commit(journal, step, [], second)
    assert journal.begin_step("run-1", "w2", 30, 0) is None
    with pytest.raises(RunFinished) as finished:
        journal.send_signal("run-1", "late", {"x": 1})
    assert finished.value.state == final
    with pytest.raises(RunFinished):
        journal.request_retry("run-1", "operator")
    if final == "cancelled":
        assert journal.request_cancel("run-1") == []  # cancelling a cancelled run is harmless
    elif final != "continued":  # (a continued run's cancel goes to its successor: see below)
        with pytest.raises(RunFinished):
            journal.request_cancel("run-1")
    with pytest.raises(LeaseLost):
        journal.renew(step.lease, 30)
    with pytest.raises(LeaseLost):
        journal.release(step.lease)
    assert state() == before
    assert journal.history("run-1")[-1].kind.value == f"run_{final}"


def test_a_cancel_fails_unstarted_activities_and_drops_timers(
    journal: Journal, travel: Callable[[float], None]
) -> None:
    start(journal)
    step = claim(journal)
    commit(journal, step, [activity(1), timer(2, step.now + timedelta(seconds=5))])
    assert journal.begin_step("run-1", "w1", 30, 0) is None  # waiting on both
    journal.request_cancel("run-1")
    step = claim(journal)
    assert [e.kind for e in step.events][-2:] == [Kind.CANCEL_REQUESTED, Kind.ACTIVITY_FAILED]
    failed = step.events[-1]
    assert failed.command_id == 1 and failed.payload["error"]["type"] == "RunCancelled"
    assert failed.payload["attempts"] == 0
    assert journal.claim_activity("run-1:1", 1, "w1") is None
    commit(journal, step, [])
    travel(10)
    assert journal.begin_step("run-1", "w1", 30, 0) is None  # the timer was dropped: nothing wakes the run


def test_cancel_twice_is_harmless_and_holds_activities_until_the_run_sees_it(
    journal: Journal, state: Callable[[], Any]
) -> None:
    start(journal)
    step = claim(journal)
    commit(journal, step, [activity(1)])
    assert journal.request_cancel("run-1") == [replay()]
    assert journal.get_run("run-1").cancel_requested
    assert journal.claim_activity("run-1:1", 1, "w1") is None  # held back: the run is about to stop
    before = state()
    assert journal.request_cancel("run-1") == []
    assert state() == before
    step = claim(journal)
    assert [e.kind for e in step.events].count(Kind.CANCEL_REQUESTED) == 1
    commit(journal, step, [], Cancelled(ERROR))
    finished = state()
    assert journal.request_cancel("run-1") == []
    assert state() == finished


def test_cancel_reaches_children(journal: Journal) -> None:
    start(journal)
    step = claim(journal)
    commit(journal, step, [child(1, "kid-1", {"x": 1})])
    journal.request_cancel("run-1")
    assert journal.get_run("kid-1").cancel_requested
    parent = claim(journal)
    assert parent.events[-1].kind is Kind.CANCEL_REQUESTED
    commit(journal, parent, [])  # the body waits for its child to stop
    kid = claim(journal, "kid-1")
    assert [e.kind for e in kid.events] == [Kind.RUN_STARTED, Kind.CANCEL_REQUESTED]
    assert commit(journal, kid, [], Cancelled(ERROR)).dispatches == [replay()]
    parent = claim(journal)
    child_events = [e for e in parent.events if e.kind is Kind.CHILD_CANCELLED]
    assert len(child_events) == 1 and child_events[0].command_id == 1
    assert child_events[0].payload["run_id"] == "kid-1"


def test_continue_as_new_starts_the_next_run(journal: Journal) -> None:
    start(journal, trace_context={"traceparent": "00-abc-def-01"})
    step = claim(journal)
    result = commit(journal, step, [], ContinueAsNew({"n": 2}), continue_version=("h2", 2))
    nxt = str(uuid.uuid5(uuid.NAMESPACE_URL, "continuum:run-1:continued"))
    assert result.finished_state == "continued" and result.continued_run_id == nxt
    assert replay(nxt, version_hash="h2") in result.dispatches
    assert journal.continued_to("run-1") == nxt
    old = journal.get_run("run-1")
    assert old.result == {"continued_to": nxt}
    assert journal.history("run-1")[-1].payload == {"next_run_id": nxt}
    new = journal.get_run(nxt)
    assert (new.state, new.workflow, new.version_hash, new.version, new.input) == (
        "pending",
        WORKFLOW,
        "h2",
        2,
        {"n": 2},
    )
    assert new.continued_from_run_id == "run-1" and new.correlation_id == "run-1"
    assert new.trace_context == {"traceparent": "00-abc-def-01"}
    assert journal.continued_to(nxt) is None
    assert journal.request_cancel("run-1") == []  # the run lives on in its successor, which is cancelled
    assert journal.get_run(nxt).cancel_requested and not journal.get_run("run-1").cancel_requested


def test_retry_unparks_a_stuck_run_with_an_audit_event(journal: Journal) -> None:
    start(journal)
    step = claim(journal)
    with pytest.raises(InvalidArgument):
        journal.request_retry("run-1", "operator")
    journal.release(step.lease, stuck_reason="nondeterminism")
    assert journal.begin_step("run-1", "w1", 30, 0) is None
    assert journal.sweep(batch=10, redispatch_after=0) == []
    assert journal.request_retry("run-1", "operator") == [replay()]
    event = journal.history("run-1")[-1]
    assert event.kind is Kind.RETRY_REQUESTED
    assert event.payload == {"by": "operator", "stuck_reason": "nondeterminism", "activities": []}
    assert journal.get_run("run-1").stuck_reason is None
    claim(journal)
