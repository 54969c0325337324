"""Timeouts, heartbeats and cancels that reach a running activity, on both paths, with no beat anywhere.

Every test runs with activities inline in their replay task and through ``continuum.activity``
messages (``inline_activities`` on and off): the activity and the workflow body see the same.
Printed figures (``-s``) are measured on the journal's clock.
"""

from __future__ import annotations

import json

import pytest

from continuum_celery import InvalidArgument, WorkflowFailed
from tests.support.flows_liveness import (
    beats_flow,
    cancel_flow,
    closing_flow,
    deadline_flow,
    nap_flow,
    plain_flow,
    stall_flow,
    stalls,
    timeout_flow,
)
from tests.support.stack import Proc, Stack, wait_until

MODULES = ("tests.support.flows", "tests.support.flows_liveness")
DROPPED = "its end is dropped"


@pytest.fixture(params=["inline", "celery"])
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def live(stack: Stack, path: str) -> tuple[Stack, Proc]:
    stack.modules = MODULES
    stack.client()
    worker = stack.worker(CONTINUUM_INLINE_ACTIVITIES="1" if path == "inline" else "0")
    return stack, worker


def _marks(stack: Stack, pattern: str) -> list[str]:
    return [r.name for r in stack.sql("SELECT name FROM test_marks WHERE name LIKE :p ORDER BY id", p=pattern)]


def _kinds(stack: Stack, run_id: str) -> list[str]:
    return [r.kind for r in stack.sql("SELECT kind FROM continuum_events WHERE run_id = :r ORDER BY seq", r=run_id)]


def _results(stack: Stack, key: str) -> int:
    return len(stack.sql("SELECT 1 FROM continuum_activity_results WHERE idempotency_key = :k", k=key))


def _inline(stack: Stack, run_id: str) -> bool:
    """Whether the run's first activity ran inside its replay task (its row names the run lease)."""
    (task,) = stack.sql(
        "SELECT run_lease_token FROM continuum_activity_tasks WHERE run_id = :r AND command_id = 1", r=run_id
    )
    return task.run_lease_token is not None


def test_an_overrunning_attempt_times_out_at_its_deadline_and_is_retried(live: tuple[Stack, Proc], path: str) -> None:
    stack, worker = live
    key = f"overrun-{path}"
    handle = timeout_flow.start({"key": key, "seconds": 8.0})
    out = handle.result(timeout=60)
    assert out["error"] == "ActivityTimeout" and out["attempts"] == 2, out
    assert "within its timeout of 2.0 s" in out["message"]
    assert _marks(stack, f"start:{key}:%") == [f"start:{key}:1", f"start:{key}:2"]  # the retry policy applied

    # Both attempts sleep on past their deadline and return: neither end is recorded.
    wait_until(lambda: len(_marks(stack, f"end:{key}:%")) == 2, 30, "both late returns")
    wait_until(lambda: worker.output().count(DROPPED) >= 2, 30, f"both late ends dropped:\n{worker.output()[-3000:]}")
    kinds = _kinds(stack, handle.id)
    assert kinds.count("activity_completed") == 0 and kinds.count("activity_failed") == 1
    assert _results(stack, key) == 0
    (task,) = stack.sql(
        "SELECT state, attempt, started_at, timeout FROM continuum_activity_tasks WHERE run_id = :r", r=handle.id
    )
    assert (task.state, task.attempt) == ("failed", 2)
    (failed_at,) = stack.sql(
        "SELECT created_at FROM continuum_events WHERE run_id = :r AND kind = 'activity_failed'", r=handle.id
    )
    late = (failed_at.created_at - task.started_at).total_seconds() - task.timeout
    print(f"\n[{path}] deadline -> ActivityTimeout in the body: {late:.2f} s")


def test_a_cancel_ends_a_run_blocked_on_its_activity(live: tuple[Stack, Proc], path: str) -> None:
    stack, worker = live
    key = f"cancel-{path}"
    handle = cancel_flow.start({"key": key, "seconds": 8.0})
    wait_until(lambda: _marks(stack, f"start:{key}"), 30, "the activity to start")
    assert _inline(stack, handle.id) == (path == "inline")
    handle.cancel()
    with pytest.raises(WorkflowFailed) as ended:
        handle.result(timeout=30)
    assert ended.value.state == "cancelled"
    assert _marks(stack, f"cleanup:{key}") == [f"cleanup:{key}"]  # the body's finally ran
    (run,) = stack.sql("SELECT cancel_requested_at, updated_at FROM continuum_runs WHERE id = :r", r=handle.id)
    print(f"\n[{path}] cancel() -> cancelled: {(run.updated_at - run.cancel_requested_at).total_seconds():.2f} s")

    # The activity returns later: its end is not recorded.
    wait_until(lambda: _marks(stack, f"end:{key}"), 30, "the activity's late return")
    wait_until(lambda: DROPPED in worker.output(), 30, f"its end dropped:\n{worker.output()[-3000:]}")
    (task,) = stack.sql(
        "SELECT state, result FROM continuum_activity_tasks WHERE run_id = :r AND command_id = 1", r=handle.id
    )
    assert (task.state, task.result) == ("cancelled", None)
    assert _results(stack, key) == 0
    kinds = _kinds(stack, handle.id)
    assert kinds.count("activity_completed") == 1 and kinds[-1] == "run_cancelled"  # the cleanup's, only


def test_a_heartbeating_activity_learns_of_the_cancel_at_its_next_heartbeats(
    live: tuple[Stack, Proc], path: str
) -> None:
    stack, _ = live
    key = f"beats-{path}"
    handle = beats_flow.start({"key": key, "beats": 60})
    wait_until(lambda: len(_marks(stack, f"beat:{key}")) >= 3, 30, "three heartbeats")
    handle.cancel()
    stopped = wait_until(lambda: _marks(stack, f"cancelled:{key}:%"), 30, "ActivityCancelled inside the activity")
    assert stopped[0].rsplit(":", 1)[1] in ("cancelled", "abandoned")
    with pytest.raises(WorkflowFailed) as ended:
        handle.result(timeout=30)
    assert ended.value.state == "cancelled"
    (run,) = stack.sql("SELECT cancel_requested_at FROM continuum_runs WHERE id = :r", r=handle.id)
    after = stack.sql(
        "SELECT 1 FROM test_marks WHERE name = :n AND at > :t", n=f"beat:{key}", t=run.cancel_requested_at
    )
    assert len(after) <= 2, f"{len(after)} heartbeats went through after the cancel"


def test_an_attempt_that_stops_heartbeating_is_retried_from_its_last_heartbeat(
    live: tuple[Stack, Proc], path: str
) -> None:
    stack, worker = live
    key = f"stall-{path}"
    handle = stall_flow.start(key)
    assert handle.result(timeout=60) == {
        "attempt": 2,
        "resumed_from": {"rows": 1200},
        "activity": stalls.name,
        "workflow": "tests.liveness.stall",
        "run_id": handle.id,
    }
    (task,) = stack.sql("SELECT error, heartbeat_details FROM continuum_activity_tasks WHERE run_id = :r", r=handle.id)
    assert "sent no heartbeat for 2.0 s" in task.error and json.loads(task.heartbeat_details) == {"rows": 1200}
    wait_until(lambda: _marks(stack, f"late:{key}"), 30, "the stalled attempt's late return")
    wait_until(lambda: DROPPED in worker.output(), 30, f"its end dropped:\n{worker.output()[-3000:]}")
    assert _kinds(stack, handle.id).count("activity_completed") == 1


def test_a_plain_celery_task_has_the_activity_context(stack: Stack) -> None:
    stack.modules = MODULES
    stack.client()
    stack.worker()
    handle = plain_flow.start(5)
    assert handle.result(timeout=30) == {
        "activity": "tests.liveness.plain_info",
        "attempt": 1,
        "run_id": handle.id,
        "x": 5,
    }
    (task,) = stack.sql("SELECT heartbeat_details FROM continuum_activity_tasks WHERE run_id = :r", r=handle.id)
    assert json.loads(task.heartbeat_details) == {"x": 5}


@pytest.mark.parametrize("waiting", ["asleep", "in_activity"])
def test_a_workflow_timeout_compensates_the_saga_and_fails_the_run(
    live: tuple[Stack, Proc], path: str, waiting: str
) -> None:
    stack, _ = live
    key = f"deadline-{path}-{waiting}"
    handle = deadline_flow.start({"key": key, "sleep": waiting == "asleep"})
    with pytest.raises(WorkflowFailed) as ended:
        handle.result(timeout=60)
    assert ended.value.state == "failed" and ended.value.error["type"] == "WorkflowTimeout"
    assert [c["ok"] for c in ended.value.error["compensations"]] == [True]
    assert _marks(stack, f"unbook:{key}:%") == [f"unbook:{key}:booking-{key}"]
    kinds = _kinds(stack, handle.id)
    assert kinds.count("run_timed_out") == 1 and kinds[-1] == "run_failed"
    (run,) = stack.sql("SELECT created_at, updated_at FROM continuum_runs WHERE id = :r", r=handle.id)
    (timed_out,) = stack.sql(
        "SELECT created_at FROM continuum_events WHERE run_id = :r AND kind = 'run_timed_out'", r=handle.id
    )
    late = (timed_out.created_at - run.created_at).total_seconds() - 4
    print(f"\n[{path}, {waiting}] workflow deadline -> WorkflowTimeout journaled: {late:.2f} s")


def test_a_timeout_given_at_start_bounds_that_run_only(live: tuple[Stack, Proc], path: str) -> None:
    stack, _ = live
    bounded = nap_flow.start(3600, timeout=2)
    free = nap_flow.start(0.5)
    assert free.result(timeout=30) == "woke"
    with pytest.raises(WorkflowFailed) as ended:
        bounded.result(timeout=30)
    assert ended.value.state == "failed" and ended.value.error["type"] == "WorkflowTimeout"
    assert "run_timed_out" in _kinds(stack, bounded.id) and "run_timed_out" not in _kinds(stack, free.id)
    runs_before = stack.sql("SELECT id FROM continuum_runs ORDER BY id")
    for bad in (0, -1, "soon", True):
        with pytest.raises(InvalidArgument, match="positive number of seconds"):
            nap_flow.start(1, timeout=bad)
    assert stack.sql("SELECT id FROM continuum_runs ORDER BY id") == runs_before, "a refused start writes nothing"


def test_schedule_to_close_ends_the_retries_of_an_activity(live: tuple[Stack, Proc], path: str) -> None:
    stack, _ = live
    key = f"closing-{path}"
    handle = closing_flow.start(key)
    out = handle.result(timeout=60)
    assert out["error"] == "ActivityTimeout" and "within its schedule_to_close of 5 s" in out["message"], out
    tries = len(_marks(stack, f"try:{key}"))
    assert out["attempts"] == tries and 2 <= tries < 10  # 2 s attempts in a 5 s budget, not the 10 of the policy
    (task,) = stack.sql("SELECT created_at, finished_at FROM continuum_activity_tasks WHERE run_id = :r", r=handle.id)
    took = (task.finished_at - task.created_at).total_seconds()
    print(f"\n[{path}] schedule_to_close 5 s: {tries} attempts, failed {took:.2f} s after scheduling")
