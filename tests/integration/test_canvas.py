"""Workflows in Celery canvas, through real worker processes and a Redis result backend.

A run started by a Celery task behaves like one long task: what follows it gets its
result (or its error) when the run ends, and ``AsyncResult(start id)`` is the run's.
"""

from __future__ import annotations

import json
import re

import pytest
from celery import chain, chord, group
from celery.result import AsyncResult

from continuum_celery import WorkflowFailed, get_run
from continuum_celery.ids import run_id_for_message
from tests.support.flows import from_canvas, prepare
from tests.support.flows_canvas import countdown, on_error, on_error_id, plus_one, seen, squared, total
from tests.support.stack import Stack, on_each_broker, wait_until

CANVAS_MODULES = ("tests.support.flows", "tests.support.flows_canvas")


def _canvas(stack: Stack) -> Stack:
    stack.modules = CANVAS_MODULES
    stack.client()
    stack.worker(concurrency=4)
    return stack


@pytest.fixture
def canvas(stack: Stack) -> Stack:
    return _canvas(stack)


def marks(stack: Stack, prefix: str) -> list[str]:
    rows = stack.sql("SELECT name FROM test_marks WHERE name LIKE :p ORDER BY id", p=f"{prefix}:%")
    return [r.name.removeprefix(f"{prefix}:") for r in rows]


def all_links_sent(stack: Stack) -> bool:
    """Every canvas link has gone out (its callbacks and errbacks have run or been sent)."""
    rows = stack.sql("SELECT sent_at FROM continuum_canvas_links")
    return bool(rows) and all(r.sent_at is not None for r in rows)


def test_a_chain_passes_the_workflow_result_on(canvas: Stack) -> None:
    result = chain(plus_one.s(3), squared.s(), plus_one.s()).delay()
    assert result.get(timeout=60) == 17  # (3 + 1) ** 2 + 1
    # The next task after wf.s() got the run's result, not its id; the run's id is its start task's.
    start = result.parent
    assert start is not None and start.get(timeout=5) == 16
    assert get_run(start.id).record().workflow == "tests.canvas.squared"


def test_the_task_after_a_workflow_in_a_chain_receives_its_result(canvas: Stack) -> None:
    chain(prepare.s(10), from_canvas.s(), seen.s(tag="after")).apply_async().get(timeout=60)
    assert marks(canvas, "after") == [json.dumps({"total": 10 + 10 + 11 + 12})]


def test_a_run_id_shared_by_two_chains_gives_each_the_result(canvas: Stack) -> None:
    first = chain(prepare.s(1), from_canvas.s(run_id="canvas-once"), seen.s(tag="shared")).apply_async()
    assert first.get(timeout=60) == {"total": 1 + 1 + 2 + 3}
    # The second chain finds the run ended: its links are sent at once.
    second = chain(prepare.s(1), from_canvas.s(run_id="canvas-once"), seen.s(tag="shared")).apply_async()
    assert second.get(timeout=60) == {"total": 7}
    assert marks(canvas, "shared") == [json.dumps({"total": 7})] * 2
    assert [r.id for r in canvas.sql("SELECT id FROM continuum_runs")] == ["canvas-once"]


@on_each_broker
def test_a_chord_of_twenty_workflows_calls_back_once_with_their_results(stack: Stack) -> None:
    canvas = _canvas(stack)
    result = chord([squared.s(i) for i in range(20)], total.s(tag="sum")).apply_async()
    assert result.get(timeout=120) == sum(i * i for i in range(20))
    assert marks(canvas, "sum") == [str(sum(i * i for i in range(20)))]
    assert len(canvas.sql("SELECT id FROM continuum_runs WHERE state = 'completed'")) == 20


def test_a_failing_workflow_in_a_chord_fails_the_chord_and_runs_its_link_error_once(canvas: Stack) -> None:
    failing = squared.s(-7).set(link_error=on_error.s(tag="part-error"))
    header = [squared.s(i) for i in range(5)] + [failing]
    result = chord(header, total.s(tag="never")).apply_async()
    with pytest.raises(Exception, match="no square for -7"):
        result.get(timeout=120)
    wait_until(lambda: all_links_sent(canvas), 60, "every part's link to go out")
    assert canvas.client().canvas.send_due() == 0
    [error] = marks(canvas, "part-error")  # the failed part's link_error ran, once
    task_id, kind, message = error.split(":", 2)
    assert kind == "WorkflowFailed" and "Refused: no square for -7" in message
    assert get_run(task_id).status() == "failed"
    assert marks(canvas, "never") == []


def test_apply_async_takes_link_countdown_and_task_id(canvas: Stack) -> None:
    result = squared.apply_async((5,), link=seen.s(tag="linked"), countdown=1, task_id="canvas-apply-5")
    assert result.id == "canvas-apply-5"
    assert result.get(timeout=60) == 25
    assert get_run("canvas-apply-5").get(timeout=5) == 25  # RunHandle.get aliases .result()
    wait_until(lambda: marks(canvas, "linked"), 60, "the link")
    assert marks(canvas, "linked") == ["25"]
    # The start task's children are what it continued, its link: never the internal continuum.replay
    # (whose result is ignored, so waiting on it would hang).
    [child] = result.children or []
    assert child.get(timeout=30) == 25


def test_a_failed_run_raises_from_get_and_runs_link_error_once(canvas: Stack) -> None:
    result = squared.apply_async((-3,), link=seen.s(tag="not-linked"), link_error=[on_error.s(), on_error_id.s()])
    with pytest.raises(WorkflowFailed, match=r"failed: .*Refused: no square for -3"):
        result.get(timeout=60)
    assert result.state == "FAILURE"
    wait_until(lambda: all_links_sent(canvas) and marks(canvas, "error-id"), 60, "both errbacks")
    [error] = marks(canvas, "error")
    assert error.startswith(f"{result.id}:WorkflowFailed:")
    assert marks(canvas, "error-id") == [result.id]
    assert marks(canvas, "not-linked") == []


def test_si_delay_and_eta(canvas: Stack) -> None:
    from datetime import datetime, timedelta, timezone

    assert chain(plus_one.s(1), squared.si(3), plus_one.s()).delay().get(timeout=60) == 10
    eta = datetime.now(timezone.utc) + timedelta(seconds=1)
    assert squared.apply_async((6,), eta=eta).get(timeout=60) == 36
    handle = squared.delay(4)  # starts directly (no Celery task): a RunHandle
    assert handle.get(timeout=60) == 16


def test_what_follows_a_run_that_continues_as_new_gets_the_last_runs_result(canvas: Stack) -> None:
    result = chain(countdown.s(2), seen.s(tag="continued")).delay()
    assert result.get(timeout=60) == "liftoff"
    assert result.parent is not None and result.parent.get(timeout=5) == "liftoff"
    assert marks(canvas, "continued") == [json.dumps("liftoff")]
    assert len(canvas.sql("SELECT id FROM continuum_runs")) == 3


def test_a_group_of_workflows_gathers_their_results(canvas: Stack) -> None:
    assert group(squared.s(i) for i in range(4)).apply_async().get(timeout=60) == [0, 1, 4, 9]


def test_a_run_ended_by_a_worker_that_died_before_sending_is_continued_by_the_sweep(stack: Stack) -> None:
    stack.modules = CANVAS_MODULES
    engine = stack.client()
    # This worker takes the start only: it consumes no replay queue, so the run does not advance.
    stack.worker("starts", queues="starts")
    result = squared.apply_async((9,), link=seen.s(tag="late"), queue="starts")
    wait_until(lambda: stack.sql("SELECT 1 FROM continuum_canvas_links"), 60, "the start task to store the link")
    # Step the run to its end here, like a worker that commits the end and dies before sending anything
    # (its one activity inline, so one step ends it, whatever the environment says).
    engine.stepper.inline_activities = True
    assert engine.stepper.step(result.id) == "completed"
    assert result.state == "PENDING" and marks(stack, "late") == []
    stack.worker("after")
    stack.beat()
    assert result.get(timeout=60) == 81
    wait_until(lambda: marks(stack, "late"), 60, "the link, sent by the sweep")
    assert engine.canvas.send_due() == 0  # sent once: nothing is due any more
    assert marks(stack, "late") == ["81"]
    [row] = stack.sql("SELECT sent_at FROM continuum_canvas_links")
    assert row.sent_at is not None


def test_a_start_that_cannot_start_fails_like_a_task(canvas: Stack) -> None:
    result = canvas.client().app.send_task(
        "continuum.start", args=[1], kwargs={"workflow": "tests.canvas.nope"}, link_error=on_error_id.s()
    )
    with pytest.raises(Exception, match="nope"):
        result.get(timeout=60)
    wait_until(lambda: marks(canvas, "error-id") == [result.id], 60, "the errback of the failed start")


@on_each_broker
def test_a_start_message_sent_three_times_starts_one_run(stack: Stack) -> None:
    """What a broker redelivery or a retrying producer does: the same task id, three deliveries."""
    stack.client()
    worker = stack.worker()
    order = {"n": 5, "items": [1, 2]}
    for _ in range(3):
        from_canvas.s(order).apply_async(task_id="same")
    # An id that is not a run id (a space) still names one run, derived from it.
    for _ in range(3):
        from_canvas.s(order).apply_async(task_id="order 17")

    def handled() -> bool:  # received (under the workflow's name) and acknowledged, all six
        received = re.findall(r"Task tests\.from_canvas\[[^\]]+\] received", worker.output())
        return len(received) == 6 and stack.pending_messages() == 0

    wait_until(handled, 60, "six start messages to be handled")
    derived = run_id_for_message("order 17")
    assert derived != "order 17" and derived == run_id_for_message("order 17")
    assert sorted(r.id for r in stack.sql("SELECT id FROM continuum_runs")) == sorted(["same", derived])
    for task_id, run_id in (("same", "same"), ("order 17", derived)):
        assert AsyncResult(task_id).get(timeout=60) == {"total": 5 + 1 + 2}
        kinds = [e.kind.value for e in get_run(run_id).history()]
        assert kinds == ["run_started", *["activity_scheduled", "activity_completed"] * 2, "run_completed"]
    # Every delivery after the first found its run and its canvas link, and wrote nothing.
    assert stack.sql("SELECT count(*) AS n FROM continuum_events")[0].n == 2 * 6
    assert stack.sql("SELECT count(*) AS n FROM continuum_activity_tasks")[0].n == 2 * 2
    links = stack.sql("SELECT task_id, run_id FROM continuum_canvas_links ORDER BY task_id")
    assert [(r.task_id, r.run_id) for r in links] == [("order 17", derived), ("same", "same")]
    assert "raised unexpected" not in worker.output()
