"""The sweep re-derives every due dispatch from the journal alone, and does not re-send within ``redispatch_after``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from continuum_celery.journal.base import Journal
from continuum_celery.journal.records import Dispatch
from continuum_celery.journal.run_rules import REDISPATCH_BACKOFF_CAP

from .support import ACTIVITY, activity, claim, commit, replay, start, timer

AFTER = 60.0


def sweep(journal: Journal, batch: int = 100) -> list[Dispatch]:
    return journal.sweep(batch=batch, redispatch_after=AFTER)


def test_a_new_run_is_swept_only_once_its_dispatch_is_old(journal: Journal, travel: Callable[[float], None]) -> None:
    start(journal)
    assert sweep(journal) == []  # create_run's own dispatch is recent
    travel(AFTER + 1)
    assert sweep(journal) == [replay()]  # the message was lost: send it again
    assert sweep(journal) == []  # ... once
    travel(AFTER * REDISPATCH_BACKOFF_CAP)  # past any back-off between re-sends
    assert sweep(journal) == [replay()]
    claim(journal)
    assert sweep(journal) == []  # held with a live lease


def test_an_expired_lease_is_swept(journal: Journal) -> None:
    start(journal)
    claim(journal, ttl=-1)  # the holder died
    assert sweep(journal) == [replay()]
    assert sweep(journal) == []
    assert claim(journal, owner="w2").lease.token == 2


def test_a_due_timer_is_swept_and_a_future_one_is_not(journal: Journal, travel: Callable[[float], None]) -> None:
    start(journal)
    step = claim(journal)
    commit(journal, step, [timer(1, step.now + timedelta(seconds=10))])
    assert sweep(journal) == []
    travel(11)
    assert sweep(journal) == [replay()]
    assert sweep(journal) == []


def test_activity_tasks_are_swept_when_lost_or_due_for_retry(journal: Journal, travel: Callable[[float], None]) -> None:
    start(journal)
    retry = {"max_attempts": 2, "initial_interval": 5.0, "backoff": 1.0, "max_interval": 5.0}
    commit(journal, claim(journal), [activity(1), activity(2, retry=retry)])
    assert sweep(journal) == []  # both were just dispatched
    travel(AFTER + 1)
    swept = sweep(journal)
    assert sorted((d.id, d.attempt, d.kind) for d in swept) == [("run-1:1", 1, "activity"), ("run-1:2", 1, "activity")]
    assert all(d.label == ACTIVITY for d in swept)
    assert sweep(journal) == []
    attempt = journal.claim_activity("run-1:2", 1, "w1")
    assert attempt is not None
    journal.finish_activity(attempt, error={"type": "E", "message": "again"})
    travel(6)
    assert sweep(journal) == []  # due, but its retry was dispatched (as a wake-up) when it was scheduled
    travel(AFTER)
    assert sorted((d.id, d.attempt) for d in sweep(journal)) == [("run-1:1", 1), ("run-1:2", 2)]


def test_a_batch_bounds_each_sweep(journal: Journal, travel: Callable[[float], None]) -> None:
    for i in range(3):
        start(journal, f"r{i}")
    travel(AFTER + 1)
    first = sweep(journal, batch=2)
    second = sweep(journal, batch=2)
    assert len(first) == 2 and len(second) == 1
    assert sorted(d.id for d in first + second) == ["r0", "r1", "r2"]
    assert sweep(journal, batch=2) == []


def test_a_parked_run_is_not_swept(journal: Journal, travel: Callable[[float], None]) -> None:
    start(journal)
    journal.release(claim(journal).lease, stuck_reason="nondeterminism")
    travel(AFTER + 1)
    assert sweep(journal) == []
