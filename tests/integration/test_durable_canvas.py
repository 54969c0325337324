"""``durable(canvas)``: an existing Celery canvas run as one journaled workflow, through real workers."""

from __future__ import annotations

import pytest
from celery import chain, chord, group

from continuum_celery import RetryPolicy, WorkflowFailed, durable
from tests.support.flows_canvas import plus_one, refuse, squared, task_a, task_b, task_c, task_d, total
from tests.support.stack import Stack, wait_until

MODULES = ("tests.support.flows", "tests.support.flows_canvas")
FAST = RetryPolicy(max_attempts=4, initial_interval=0.2, backoff=1.0)


def attempts(stack: Stack, name: str) -> int:
    return int(stack.sql("SELECT count(*) AS n FROM test_marks WHERE name = :n", n=f"ran:{name}")[0].n)


def effects(stack: Stack) -> list[str]:
    return [r.key for r in stack.sql("SELECT key FROM test_effects ORDER BY key")]


@pytest.fixture
def durable_stack(stack: Stack) -> Stack:
    stack.modules = MODULES
    stack.client()
    return stack


def test_a_chain_through_a_group_survives_a_worker_killed_mid_group(durable_stack: Stack) -> None:
    stack = durable_stack
    first = stack.worker("first", concurrency=2)
    stack.beat()
    canvas = chain(task_a.s(1), group(task_b.s(hold=3.0), task_c.s()), task_d.s())
    run = durable(canvas, retry=FAST, timeout=6)

    wait_until(lambda: stack.sql("SELECT 1 FROM test_marks WHERE name = 'holding:b'"), 60, "b to be running")
    first.kill()  # SIGKILL the worker and its pool mid-group
    stack.worker("second", concurrency=2)

    assert run.result(timeout=120) == {"got": [20, 200]}  # d got the group's results, in order
    assert attempts(stack, "a") == 1 and attempts(stack, "d") == 1  # before and after the group: once each
    assert attempts(stack, "b") >= 2  # the killed attempt and its retry
    assert effects(stack) == ["a", "b", "c", "d"]  # each idempotent effect once


def test_a_chord_with_a_nested_chain_and_a_workflow_calls_its_body_once(durable_stack: Stack) -> None:
    durable_stack.worker(concurrency=3)
    header = [chain(task_a.s(1), task_c.s()), task_b.s(3), squared.s(4)]
    run = durable(chord(header, task_d.s()), retry=FAST)
    assert run.result(timeout=120) == {"got": [200, 30, 16]}
    assert attempts(durable_stack, "d") == 1
    # The nested chain ran as a child run of its own, the workflow signature as a child run of its workflow.
    children = durable_stack.sql("SELECT workflow FROM continuum_runs WHERE parent_run_id = :r ORDER BY 1", r=run.id)
    assert [c.workflow for c in children] == ["continuum.canvas", "tests.canvas.squared"]


def test_a_failing_task_fails_the_run_and_the_chord_body_never_runs(durable_stack: Stack) -> None:
    durable_stack.worker(concurrency=2)
    run = durable(
        chord([plus_one.s(1), refuse.s()], total.s()), retry=RetryPolicy(max_attempts=2, initial_interval=0.1)
    )
    with pytest.raises(WorkflowFailed, match="Refused"):
        run.result(timeout=120)
    assert attempts(durable_stack, "refuse") == 2
    assert durable_stack.sql("SELECT 1 FROM test_marks WHERE name LIKE 'total:%'") == []


def test_immutable_and_group_results(durable_stack: Stack) -> None:
    durable_stack.worker(concurrency=2)
    run = durable(chain(plus_one.s(1), group(plus_one.si(10), plus_one.s())), retry=FAST)
    assert run.result(timeout=120) == [11, 3]
