"""Outside input and what waits on it: signals (FIFO, kept until waited for), timers, child runs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from continuum_celery.errors import RunConflict
from continuum_celery.events import Kind, NewEvent
from continuum_celery.journal.base import Journal
from continuum_celery.replay import Complete, Fail

from .support import CHILD, WORKFLOW, child, claim, commit, replay, side_effect, signal_wait, start, timer


def received(step: Any) -> list[tuple[int, Any]]:
    return [(e.command_id, e.payload["payload"]) for e in step.events if e.kind is Kind.SIGNAL_RECEIVED]


def test_signals_sent_before_the_wait_are_kept_and_taken_in_order(
    journal: Journal, travel: Callable[[float], None]
) -> None:
    start(journal)
    for name, payload in [("approve", 1), ("other", "x"), ("approve", 2)]:
        assert journal.send_signal("run-1", name, payload) == []  # the new run is already dispatched
    step = claim(journal)
    assert received(step) == []  # nobody waits yet: the inbox keeps them
    result = commit(journal, step, [signal_wait(1, "approve")])
    assert result.runnable_again  # a matching signal is waiting
    step = claim(journal, after=result.last_seq)
    assert received(step) == [(1, 1)]
    result = commit(journal, step, [signal_wait(2, "approve", timeout_at=step.now + timedelta(seconds=60))])
    step = claim(journal, after=result.last_seq)
    assert received(step) == [(2, 2)]
    deadline = step.now + timedelta(seconds=60)
    result = commit(journal, step, [signal_wait(3, "approve", timeout_at=deadline)])
    assert not result.runnable_again and result.next_wakeup_at == deadline
    assert journal.begin_step("run-1", "w1", 30, 0) is None
    travel(61)
    step = claim(journal, after=result.last_seq)
    assert [(e.kind, e.command_id) for e in step.events] == [(Kind.SIGNAL_TIMED_OUT, 3)]
    result = commit(journal, step, [signal_wait(4, "other")])
    assert received(claim(journal, after=result.last_seq)) == [(4, "x")]


def test_input_arriving_during_a_step_makes_the_run_runnable_again(journal: Journal) -> None:
    start(journal)
    step = claim(journal)
    assert journal.send_signal("run-1", "late", {"n": 1}) == []  # held: the holder will notice
    result = commit(journal, step, [signal_wait(1, "other")])
    assert result.runnable_again
    assert journal.get_run("run-1").state == "suspended"
    claim(journal)


def test_a_timer_wakes_the_run_when_due(journal: Journal, travel: Callable[[float], None]) -> None:
    start(journal)
    step = claim(journal)
    early, late = step.now + timedelta(seconds=30), step.now + timedelta(seconds=90)
    result = commit(journal, step, [timer(1, late), timer(2, early)])
    assert not result.runnable_again and result.next_wakeup_at == early
    assert journal.begin_step("run-1", "w1", 30, 0) is None
    travel(31)
    step = claim(journal, after=result.last_seq)
    assert [(e.kind, e.command_id) for e in step.events] == [(Kind.TIMER_FIRED, 2)]
    result = commit(journal, step, [])
    assert result.next_wakeup_at is not None and result.next_wakeup_at > step.now  # the later timer
    assert journal.begin_step("run-1", "w1", 30, 0) is None
    travel(60)
    assert [(e.kind, e.command_id) for e in claim(journal, after=result.last_seq).events] == [(Kind.TIMER_FIRED, 1)]


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [(Complete({"invoice": 9}), Kind.CHILD_COMPLETED), (Fail({"type": "E", "message": "no"}), Kind.CHILD_FAILED)],
)
def test_a_child_run_reports_its_end_to_its_parent(journal: Journal, outcome: Any, kind: Kind) -> None:
    start(journal)
    step = claim(journal)
    result = commit(journal, step, [child(1, "kid-1", {"order": 9})])
    assert replay("kid-1", CHILD, "c1") in result.dispatches
    kid = journal.get_run("kid-1")
    assert (kid.workflow, kid.version_hash, kid.input, kid.parent_run_id, kid.parent_command_id) == (
        CHILD,
        "c1",
        {"order": 9},
        "run-1",
        1,
    )
    assert kid.correlation_id == "run-1" and kid.state == "pending"
    assert journal.begin_step("run-1", "w1", 30, 0) is None  # the parent waits
    done = commit(journal, claim(journal, "kid-1"), [], outcome)
    assert done.dispatches == [replay()]
    event = claim(journal).events[-1]
    assert (event.kind, event.command_id, event.name) == (kind, 1, CHILD)
    assert event.payload["run_id"] == "kid-1"
    assert event.payload["result" if kind is Kind.CHILD_COMPLETED else "error"] == getattr(
        outcome, "result", getattr(outcome, "error", None)
    )


def test_a_child_id_used_by_another_run_is_refused_and_nothing_is_written(
    journal: Journal, state: Callable[[], Any]
) -> None:
    start(journal, "taken")
    start(journal)
    step = claim(journal)
    before = state()
    with pytest.raises(RunConflict):
        commit(journal, step, [side_effect(1, 0.5), child(2, "taken")])
    assert state() == before
    assert journal.get_run("taken").parent_run_id is None and journal.get_run("taken").workflow == WORKFLOW
    commit(journal, step, [side_effect(1, 0.5), child(2, "kid-ok")])
    assert journal.get_run("kid-ok").parent_run_id == "run-1"


def test_a_claim_hands_over_the_signals_no_pending_wait_took_and_a_commit_consumes_them(journal: Journal) -> None:
    start(journal)
    step = claim(journal)
    result = commit(journal, step, [signal_wait(1, "go")])
    for name, payload in [("go", 1), ("other", "x"), ("go", 2), ("go", 3)]:
        journal.send_signal("run-1", name, payload)
    step = claim(journal, after=result.last_seq)
    assert received(step) == [(1, 1)]  # the pending wait took the first; the rest wait in arrival order
    assert [(s.name, s.payload) for s in step.inbox] == [("other", "x"), ("go", 2), ("go", 3)]
    go2, go3 = step.inbox[1], step.inbox[2]
    receipts = [
        signal_wait(2, "go"),
        NewEvent(Kind.SIGNAL_RECEIVED, 2, "go", {"payload": 2, "signal_id": go2.id}),
        signal_wait(3, "go"),
        NewEvent(Kind.SIGNAL_RECEIVED, 3, "go", {"payload": 3, "signal_id": go3.id}),
        signal_wait(4, "go"),
    ]
    result = commit(journal, step, receipts)
    assert not result.runnable_again  # the one wait left pending has no signal waiting
    journal.send_signal("run-1", "go", 4)
    step = claim(journal, after=result.last_seq)
    assert received(step) == [(4, 4)]  # consumed signals are never delivered again
    assert [s.payload for s in step.inbox] == ["x"]
    kinds = [(e.kind, e.command_id) for e in journal.history("run-1") if e.command_id in (2, 3)]
    assert kinds == [(Kind.SIGNAL_WAIT, 2), (Kind.SIGNAL_RECEIVED, 2), (Kind.SIGNAL_WAIT, 3), (Kind.SIGNAL_RECEIVED, 3)]


def test_a_wait_left_pending_with_its_signal_already_sent_makes_the_run_runnable_again(journal: Journal) -> None:
    start(journal)
    step = claim(journal)
    journal.send_signal("run-1", "go", 1)  # the claim read no inbox: no wait was pending then
    result = commit(journal, step, [signal_wait(1, "go")])
    assert result.runnable_again
    step = claim(journal, after=result.last_seq)
    assert received(step) == [(1, 1)] and step.inbox == []
