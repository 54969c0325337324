"""Cancellation through real ``celery worker`` processes: trees of runs, cleanup, sagas, bad requests."""

from __future__ import annotations

import pytest

from continuum_celery import RunFinished, WorkflowFailed
from tests.support.flows_compose import cleanup_on_cancel, continue_then_sleep, quick, saga_cancelled, sleepy_parent
from tests.support.stack import Stack, wait_until

MODULES = ("tests.support.flows", "tests.support.flows_compose")


@pytest.fixture(params=["inline", "celery"])
def cancelling(stack: Stack, request: pytest.FixtureRequest) -> Stack:
    """A worker with lone awaited activities run inline in their replay task, or all through Celery."""
    stack.modules = MODULES
    stack.client()
    stack.worker(concurrency=4, CONTINUUM_INLINE_ACTIVITIES="1" if request.param == "inline" else "0")
    return stack


def _state(stack: Stack, run_id: str) -> str:
    return stack.sql("SELECT state FROM continuum_runs WHERE id = :r", r=run_id)[0].state


def _has_event(handle, kind: str) -> bool:  # type: ignore[no-untyped-def]
    return any(e.kind.value == kind for e in handle.history())


def test_cancelling_a_sleeping_parent_cancels_its_running_children(cancelling: Stack) -> None:
    handle = sleepy_parent.start({"key": "tree", "child": {"steps": 3, "hold": 3.0}})
    children = wait_until(
        lambda: (
            [r.id for r in cancelling.sql("SELECT id FROM continuum_runs WHERE parent_run_id = :p", p=handle.id)]
            if len(cancelling.sql("SELECT id FROM continuum_runs WHERE parent_run_id = :p", p=handle.id)) == 2
            else None
        ),
        30,
        "two children",
    )
    # Both children are inside their first activity, and the parent sleeps on its timer.
    wait_until(
        lambda: len(cancelling.sql("SELECT 1 FROM test_marks WHERE name LIKE 'start:tree:%'")) == 2, 30, "2 holds"
    )
    wait_until(lambda: _has_event(handle, "timer_scheduled") and handle.status() == "suspended", 30, "parent asleep")

    handle.cancel()
    handle.cancel()  # twice is harmless
    cancelled_at = cancelling.sql("SELECT cancel_requested_at FROM continuum_runs WHERE id = :r", r=handle.id)[0][0]

    wait_until(lambda: all(_state(cancelling, r) == "cancelled" for r in [handle.id, *children]), 60, "3 cancelled")
    # The activities that were running finish, after their runs ended: none is recorded, retried or started again.
    wait_until(
        lambda: (
            not cancelling.sql(
                "SELECT 1 FROM continuum_activity_tasks WHERE run_id = ANY(:ids) AND state IN ('running', 'scheduled')",
                ids=children,
            )
        ),
        30,
        "the running holds to end",
    )
    with pytest.raises(WorkflowFailed) as ended:
        handle.result(timeout=5)
    assert ended.value.state == "cancelled" and ended.value.error["type"] == "RunCancelled"

    starts = cancelling.sql("SELECT name, at FROM test_marks WHERE name LIKE 'start:tree:%' ORDER BY id")
    assert sorted(s.name for s in starts) == ["start:tree:a:0", "start:tree:b:0"]
    assert all(s.at < cancelled_at for s in starts)
    tasks = cancelling.sql(
        "SELECT run_id, command_id, state, attempt FROM continuum_activity_tasks WHERE run_id = ANY(:ids)",
        ids=children,
    )
    # The only attempts ever claimed are the two that were running before the cancel, abandoned as their runs ended.
    assert sorted((t.command_id, t.state, t.attempt) for t in tasks) == [(1, "cancelled", 1), (1, "cancelled", 1)]
    timer = cancelling.sql("SELECT state FROM continuum_timers WHERE run_id = :r", r=handle.id)
    assert [t.state for t in timer] == ["cancelled"]
    for child in children:
        kinds = [e.kind for e in cancelling.client().journal.history(child)]
        assert [k.value for k in kinds][-1] == "run_cancelled"
        assert "cancel_requested" in [k.value for k in kinds]
    assert [e.kind.value for e in handle.history()][-1] == "run_cancelled"


def test_the_body_can_catch_run_cancelled_to_clean_up(cancelling: Stack) -> None:
    handle = cleanup_on_cancel.start("c1")
    finished = quick.start(7)
    wait_until(lambda: _has_event(handle, "signal_wait") and handle.status() == "suspended", 30, "the wait")
    handle.cancel()
    with pytest.raises(WorkflowFailed) as ended:
        handle.result(timeout=30)
    assert ended.value.state == "cancelled"
    assert {r.key for r in cancelling.sql("SELECT key FROM test_effects")} == {"do:c1:99"}
    kinds = [e.kind.value for e in handle.history()]
    assert kinds.index("cancel_requested") < kinds.index("activity_scheduled") < kinds.index("run_cancelled")
    assert cancelling.sql("SELECT state FROM continuum_timers WHERE run_id = :r", r=handle.id)[0].state == "cancelled"

    # Cancelling a run that already ended is a clear error and writes nothing.
    assert finished.result(timeout=30) == 49
    with pytest.raises(RunFinished, match="is completed; it cannot be cancelled"):
        finished.cancel()
    assert finished.status() == "completed"
    assert cancelling.sql("SELECT cancel_requested_at FROM continuum_runs WHERE id = :r", r=finished.id)[0][0] is None


def test_cancel_runs_saga_compensations_and_follows_continue_as_new(cancelling: Stack) -> None:
    saga = saga_cancelled.start("s1")
    chain = continue_then_sleep.start(0)
    wait_until(lambda: _has_event(saga, "timer_scheduled") and saga.status() == "suspended", 30, "the saga's sleep")
    successor = wait_until(lambda: cancelling.client().journal.continued_to(chain.id), 30, "the continued run")
    wait_until(lambda: _state(cancelling, successor) == "suspended", 30, "the successor's sleep")

    saga.cancel()
    chain.cancel()  # the first run is over (continued): the cancel goes to its successor

    with pytest.raises(WorkflowFailed) as ended:
        saga.result(timeout=30)
    assert ended.value.state == "cancelled"
    assert [(c["activity"], c["ok"]) for c in ended.value.error["compensations"]] == [("tests.compose.book", True)]
    assert {r.key for r in cancelling.sql("SELECT key FROM test_effects")} == {"do:s1:1", "undo:s1:1:s1-1"}

    with pytest.raises(WorkflowFailed) as chain_ended:
        chain.result(timeout=30)
    assert chain_ended.value.state == "cancelled" and chain_ended.value.run_id == successor
    assert chain.status() == "continued"
