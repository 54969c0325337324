"""Sagas, child workflows and continue-as-new through real ``celery worker`` processes."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from continuum_celery import WorkflowFailed
from continuum_celery.context import RunInfo, context_factory
from continuum_celery.events import Event, Kind
from continuum_celery.replay import Execution, Fail
from tests.support.flows_compose import (
    book,
    chain_flow,
    chain_parent,
    four_step_saga,
    parent_flow,
    stuck_compensation,
)
from tests.support.stack import Stack

MODULES = ("tests.support.flows", "tests.support.flows_compose")
NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(params=["inline", "celery"])
def compose(stack: Stack, request: pytest.FixtureRequest) -> Stack:
    """A worker with lone awaited activities run inline in their replay task, or all through Celery."""
    stack.modules = MODULES
    stack.client()
    stack.worker(concurrency=4, CONTINUUM_INLINE_ACTIVITIES="1" if request.param == "inline" else "0")
    return stack


def _marks(stack: Stack, prefix: str) -> list[str]:
    rows = stack.sql("SELECT name FROM test_marks WHERE name LIKE :p ORDER BY id", p=f"%:{prefix}:%")
    return [r.name for r in rows]


def _effects(stack: Stack, prefix: str) -> set[str]:
    return {r.key for r in stack.sql("SELECT key FROM test_effects WHERE key LIKE :p", p=f"%:{prefix}:%")}


def _kinds(handle) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.kind.value for e in handle.history()]


def test_a_saga_waits_for_activities_in_flight_before_compensating() -> None:
    def body(ctx: Any, _: Any) -> None:
        first = ctx.start_activity(book, "p", 1)
        ctx.start_activity(book, "p", 2)
        first.result()

    execution = Execution(body, None, context_factory(RunInfo("r", "wf", "h")), saga=True, run_id="r")
    try:
        assert len(execution.advance([Event(1, Kind.RUN_STARTED)], NOW).commands) == 2
        execution.acknowledge(3)
        failed = Event(4, Kind.ACTIVITY_FAILED, 1, book.name, {"error": {"type": "StepRefused"}, "attempts": 3})
        decision = execution.advance([failed], NOW)
        assert decision.commands == [] and decision.outcome is None  # step 2 may still land: wait for it

        completed = Event(5, Kind.ACTIVITY_COMPLETED, 2, book.name, {"result": {"booking": "p-2"}})
        [undo] = execution.advance([completed], NOW).commands
        assert undo.kind is Kind.COMPENSATION_SCHEDULED and undo.payload["for_command"] == 2
        assert undo.payload["result"] == {"booking": "p-2"} and undo.payload["args"] == ["p", 2]
        execution.acknowledge(6)

        decision = execution.advance([Event(7, Kind.COMPENSATION_COMPLETED, 3, book.name, {"result": "ok"})], NOW)
        assert isinstance(decision.outcome, Fail)
        assert decision.outcome.error["type"] == "ActivityFailed"
        assert [(c["command_id"], c["ok"]) for c in decision.outcome.error["compensations"]] == [(2, True)]
    finally:
        execution.close()


def test_saga_compensates_completed_steps_in_reverse_once_each(compose: Stack) -> None:
    handle = four_step_saga.start("o1")
    with pytest.raises(WorkflowFailed) as failed:
        handle.result(timeout=60)

    error = failed.value.error
    assert failed.value.state == "failed"
    assert error["type"] == "ActivityFailed" and "step 3 of o1 is refused" in error["message"]
    assert [(c["command_id"], c["ok"]) for c in error["compensations"]] == [(2, True), (1, True)]
    # Step 3 was tried three times (its retry policy), step 4 never; undo 2 then undo 1, each once.
    assert _marks(compose, "o1") == ["do:o1:1", "do:o1:2", "do:o1:3", "do:o1:3", "do:o1:3", "undo:o1:2", "undo:o1:1"]
    assert _effects(compose, "o1") == {"do:o1:1", "do:o1:2", "undo:o1:2:o1-2", "undo:o1:1:o1-1"}

    history = handle.history()
    scheduled = [e for e in history if e.kind.value == "compensation_scheduled"]
    assert [e.payload["for_command"] for e in scheduled] == [2, 1]
    assert [e.payload["result"] for e in scheduled] == [{"booking": "o1-2"}, {"booking": "o1-1"}]
    completed = [e for e in history if e.kind.value == "compensation_completed"]
    assert [e.payload["result"] for e in completed] == ["undone o1-2", "undone o1-1"]
    assert _kinds(handle)[-1] == "run_failed"
    tasks = compose.sql(
        "SELECT state, attempt FROM continuum_activity_tasks WHERE run_id = :r AND kind = 'compensation'", r=handle.id
    )
    assert sorted(tuple(t) for t in tasks) == [("completed", 1), ("completed", 1)]


def test_a_compensation_that_keeps_failing_ends_in_a_terminal_record(compose: Stack) -> None:
    handle = stuck_compensation.start("o2")
    with pytest.raises(WorkflowFailed) as failed:
        handle.result(timeout=60)

    compensations = failed.value.error["compensations"]
    assert [(c["activity"], c["ok"]) for c in compensations] == [
        ("tests.compose.book", True),
        ("tests.compose.lock", False),
    ]
    stuck = compensations[1]
    assert stuck["error"]["type"] == "RuntimeError" and "cannot release lock-o2" in stuck["error"]["message"]
    assert stuck["attempts"] == 2  # the compensation's own retry policy, not the activity's 3
    assert _marks(compose, "o2").count("undo:o2:lock") == 2
    kinds = _kinds(handle)
    assert kinds.count("compensation_failed") == 1 and kinds.count("compensation_completed") == 1
    assert kinds[-1] == "run_failed"
    task = compose.sql(
        "SELECT state, attempt, max_attempts FROM continuum_activity_tasks "
        "WHERE run_id = :r AND kind = 'compensation' AND name = 'tests.compose.lock'",
        r=handle.id,
    )
    assert [tuple(t) for t in task] == [("failed", 2, 2)]


def test_twenty_children_in_a_gather_one_fails(compose: Stack) -> None:
    handle = parent_flow.start(20)
    results = handle.result(timeout=90)

    assert len(results) == 20
    failed = [(i, r) for i, r in enumerate(results) if "failed" in r]
    assert [(i, r["failed"]) for i, r in failed] == [(13, "ChildFailed")]
    assert [r["value"] for i, r in enumerate(results) if i != 13] == [i * i for i in range(20) if i != 13]

    children = compose.sql(
        "SELECT id, state, parent_run_id, parent_command_id, correlation_id, created_at FROM continuum_runs "
        "WHERE parent_run_id = :p ORDER BY parent_command_id",
        p=handle.id,
    )
    assert [c.parent_command_id for c in children] == list(range(1, 21))
    assert {c.correlation_id for c in children} == {handle.id}
    assert [c.state for c in children].count("failed") == 1 and children[13].state == "failed"
    assert failed[0][1]["run_id"] == children[13].id
    # child_started is journaled in the transaction that inserted the child (one now() per transaction).
    started = {
        r.child: r.created_at
        for r in compose.sql(
            "SELECT payload::json->>'run_id' AS child, created_at FROM continuum_events "
            "WHERE run_id = :p AND kind = 'child_started'",
            p=handle.id,
        )
    }
    assert {c.id: c.created_at for c in children} == started
    kinds = _kinds(handle)
    assert kinds.count("child_completed") == 19 and kinds.count("child_failed") == 1


def test_continue_as_new_fifty_times_follows_the_chain(compose: Stack) -> None:
    first = chain_flow.start({"n": 0, "until": 51})
    parent = chain_parent.start(4)  # meanwhile: a child that continues as new stays its parent's child
    final = first.result(timeout=120)

    chain = compose.sql(
        "WITH RECURSIVE c AS ("
        " SELECT id, state, correlation_id, continued_from_run_id, 1 AS depth FROM continuum_runs WHERE id = :r"
        " UNION ALL SELECT r.id, r.state, r.correlation_id, r.continued_from_run_id, c.depth + 1"
        " FROM continuum_runs r JOIN c ON r.continued_from_run_id = c.id)"
        " SELECT * FROM c ORDER BY depth",
        r=first.id,
    )
    assert len(chain) == 51  # the first run and its 50 continuations
    assert [r.state for r in chain] == ["continued"] * 50 + ["completed"]
    assert {r.correlation_id for r in chain} == {first.id}
    assert final == {"n": 51, "run_id": chain[-1].id}
    assert first.status() == "continued"
    assert [e.kind.value for e in first.history()][-1] == "run_continued"

    out = parent.result(timeout=60)
    children = compose.sql(
        "SELECT id, state, parent_run_id, parent_command_id FROM continuum_runs "
        "WHERE correlation_id = :p AND id <> :p ORDER BY created_at",
        p=parent.id,
    )
    assert [r.state for r in children] == ["continued"] * 3 + ["completed"]
    assert {(r.parent_run_id, r.parent_command_id) for r in children} == {(parent.id, 1)}
    assert out == {"child": children[0].id, "result": {"n": 4, "run_id": children[-1].id}}
    assert _kinds(parent).count("child_completed") == 1
