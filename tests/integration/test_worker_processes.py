"""The core slice through real ``celery worker`` processes, PostgreSQL, and Redis or RabbitMQ as the broker."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from celery import Task

from tests.support.flows import plain_double, plain_task_flow, sequence_and_fanout
from tests.support.stack import Stack, on_each_broker, wait_until


def _seqs(stack: Stack, run_id: str) -> list[int]:
    return [r.seq for r in stack.sql("SELECT seq FROM continuum_events WHERE run_id = :r ORDER BY seq", r=run_id)]


@on_each_broker
def test_sequence_and_fanout_completes_through_a_worker_process(stack: Stack) -> None:
    stack.client()
    stack.worker()
    handle = sequence_and_fanout.start(100)
    assert handle.result(timeout=60) == {"total": 10, "fanned": [100 + i for i in range(10)]}
    seqs = _seqs(stack, handle.id)
    assert seqs == list(range(1, len(seqs) + 1))
    kinds = [e.kind.value for e in handle.history()]
    assert kinds.count("activity_completed") == 15
    assert kinds[-1] == "run_completed"


@on_each_broker
def test_a_plain_celery_task_runs_as_an_activity_unchanged(stack: Stack) -> None:
    stack.client()
    stack.worker()
    handle = plain_task_flow.start(21)
    assert handle.result(timeout=60) == {"doubled": 42, "plus_one": 43}
    rows = stack.sql(
        "SELECT name, state, attempt FROM continuum_activity_tasks WHERE run_id = :r ORDER BY command_id",
        r=handle.id,
    )
    assert [(r.name, r.state, r.attempt) for r in rows] == [
        ("tests.plain_double", "completed", 1),
        ("tests.support.flows.add", "completed", 1),
    ]
    completed = [e for e in handle.history() if e.kind.value == "activity_completed"]
    assert completed[0].name == "tests.plain_double" and completed[0].payload["result"] == 42
    # Still an ordinary Celery task: nothing about it was wrapped or re-registered.
    assert isinstance(plain_double._get_current_object(), Task)
    assert plain_double(5) == 10


def _refusal(database_url: str, redis_url: str, tmp_path: Path) -> str:
    """The log of a worker started on ``database_url``, which must exit before it is ready."""
    stack = Stack(database_url=database_url, redis_url=redis_url, tmp=tmp_path)
    try:
        proc = stack.worker(wait=False)
        wait_until(lambda: proc.popen.poll() is not None, 60, "the worker on an unusable journal to exit")
        log = proc.output()
        assert proc.popen.returncode != 0, log
        assert "ready." not in log
        return log
    finally:
        stack.close()


def test_a_worker_refuses_an_unmigrated_database(fresh_pg_url: str, redis_url: str, tmp_path: Path) -> None:
    log = _refusal(fresh_pg_url, redis_url, tmp_path)
    assert "continuum migrate" in log, log
    # Nothing was created: the database is as empty as before.
    engine = sa.create_engine(fresh_pg_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_a_worker_refuses_a_database_it_cannot_reach(redis_url: str, tmp_path: Path) -> None:
    log = _refusal("postgresql://postgres@127.0.0.1:1/continuum", redis_url, tmp_path)
    assert "the worker cannot start: cannot reach the journal database" in log, log
