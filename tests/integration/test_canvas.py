"""Starting runs from existing Celery code: ``wf.s(...)`` inside a chain, through a worker process."""

from __future__ import annotations

import re

from celery import chain

from continuum_celery import get_run
from continuum_celery.ids import run_id_for_message
from tests.support.flows import from_canvas, prepare, remember_run
from tests.support.stack import Stack, on_each_broker, wait_until


def _chained_run_ids(stack: Stack) -> list[str]:
    rows = stack.sql("SELECT name FROM test_marks WHERE name LIKE 'chained:%' ORDER BY id")
    return [r.name.removeprefix("chained:") for r in rows]


def test_wf_s_in_a_chain_starts_a_run_with_the_previous_result(stack: Stack) -> None:
    stack.client()
    stack.worker()
    chain(prepare.s(10), from_canvas.s(), remember_run.s()).apply_async()

    # The link after the start received the run id; the run's input is prepare's result.
    run_ids = wait_until(lambda: _chained_run_ids(stack), 60, "the link after continuum.start to run")
    assert len(run_ids) == 1
    handle = get_run(run_ids[0])
    assert handle.result(timeout=60) == {"total": 10 + 10 + 11 + 12}
    assert handle.record().workflow == "tests.from_canvas"
    assert handle.record().input == {"n": 10, "items": [10, 11, 12]}
    assert [r.id for r in stack.sql("SELECT id FROM continuum_runs")] == [handle.id]


def test_wf_s_with_a_run_id_is_idempotent_across_chains(stack: Stack) -> None:
    stack.client()
    stack.worker()
    for _ in range(2):
        chain(prepare.s(1), from_canvas.s(run_id="canvas-once"), remember_run.s()).apply_async()

    wait_until(lambda: len(_chained_run_ids(stack)) == 2, 60, "both chains to reach their last link")
    assert _chained_run_ids(stack) == ["canvas-once", "canvas-once"]
    assert get_run("canvas-once").result(timeout=60) == {"total": 1 + 1 + 2 + 3}
    assert len(stack.sql("SELECT id FROM continuum_runs")) == 1
    started = stack.sql("SELECT seq FROM continuum_events WHERE run_id = 'canvas-once' AND kind = 'run_started'")
    assert len(started) == 1


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

    def returned() -> list[str]:  # what each handled start message returned to the next link: its run id
        return re.findall(r"Task continuum\.start\[[^\]]+\] succeeded in [\d.]+s: '([^']+)'", worker.output())

    wait_until(lambda: len(returned()) == 6, 60, "six start messages to be handled")
    derived = run_id_for_message("order 17")
    assert derived != "order 17" and derived == run_id_for_message("order 17")
    assert sorted(r.id for r in stack.sql("SELECT id FROM continuum_runs")) == sorted(["same", derived])
    for run_id in ("same", derived):
        handle = get_run(run_id)
        assert handle.result(timeout=60) == {"total": 5 + 1 + 2}
        kinds = [e.kind.value for e in handle.history()]
        assert kinds == ["run_started", *["activity_scheduled", "activity_completed"] * 2, "run_completed"]
    # Every delivery after the first found its run and wrote nothing.
    assert stack.sql("SELECT count(*) AS n FROM continuum_events")[0].n == 2 * 6
    assert stack.sql("SELECT count(*) AS n FROM continuum_activity_tasks")[0].n == 2 * 2
    assert sorted(returned()) == sorted(["same"] * 3 + [derived] * 3)
    assert "raised unexpected" not in worker.output()
