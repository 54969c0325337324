"""The core slice through real ``celery worker`` processes, PostgreSQL and Redis."""

from __future__ import annotations

from tests.support.flows import sequence_and_fanout
from tests.support.stack import Stack


def _seqs(stack: Stack, run_id: str) -> list[int]:
    return [r.seq for r in stack.sql("SELECT seq FROM continuum_events WHERE run_id = :r ORDER BY seq", r=run_id)]


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
