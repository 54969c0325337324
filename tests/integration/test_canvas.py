"""Starting runs from existing Celery code: ``wf.s(...)`` inside a chain, through a worker process."""

from __future__ import annotations

from celery import chain

from continuum_celery import get_run
from tests.support.flows import from_canvas, prepare, remember_run
from tests.support.stack import Stack, wait_until


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
