"""Small builders for contract tests: runs, commands, claims and commits, as a stepper would send them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from continuum_celery.events import Kind, NewEvent
from continuum_celery.journal.base import Journal
from continuum_celery.journal.records import Dispatch, NewRun, RunRecord, StepResult, StepStart
from continuum_celery.replay import Outcome

WORKFLOW = "tests.journal.flow"
CHILD = "tests.journal.child"
ACTIVITY = "tests.journal.act"

T = TypeVar("T")


def new_run(run_id: str = "run-1", input: Any = None, **fields: Any) -> NewRun:
    """A run of the test workflow, version ``h1``."""
    return NewRun(
        id=run_id,
        workflow=fields.pop("workflow", WORKFLOW),
        version_hash="h1",
        version=1,
        input={"n": 1} if input is None else input,
        **fields,
    )


def start(journal: Journal, run_id: str = "run-1", input: Any = None, **fields: Any) -> RunRecord:
    """Create a run (it must be new)."""
    record, created = journal.create_run(new_run(run_id, input, **fields))
    assert created
    return record


def claim(journal: Journal, run_id: str = "run-1", owner: str = "w1", ttl: float = 30.0, after: int = 0) -> StepStart:
    """Claim a run that must be claimable."""
    step = journal.begin_step(run_id, owner, ttl, after)
    assert step is not None, f"run {run_id} was not claimable"
    return step


def commit(
    journal: Journal,
    step: StepStart,
    commands: Sequence[NewEvent] = (),
    outcome: Outcome | None = None,
    *,
    continue_version: tuple[str, int] | None = None,
) -> StepResult:
    """Commit a decision under the step's lease."""
    return journal.commit_step(
        step.lease,
        list(commands),
        outcome,
        wake_seq=step.wake_seq,
        child_versions={CHILD: ("c1", 1)},
        continue_version=continue_version,
    )


def activity(
    cid: int,
    *args: Any,
    retry: dict[str, Any] | None = None,
    key: str | None = None,
    timeout: float | None = None,
    name: str = ACTIVITY,
) -> NewEvent:
    """An ``activity_scheduled`` command as ``ctx.start_activity`` writes it."""
    payload = {
        "args": list(args),
        "kwargs": {},
        "queue": None,
        "retry": retry or {"max_attempts": 1},
        "timeout": timeout,
        "idempotency_key": key,
    }
    return NewEvent(Kind.ACTIVITY_SCHEDULED, cid, name, payload)


def timer(cid: int, fire_at: datetime) -> NewEvent:
    return NewEvent(Kind.TIMER_SCHEDULED, cid, None, {"fire_at": fire_at.isoformat()})


def signal_wait(cid: int, name: str, timeout_at: datetime | None = None) -> NewEvent:
    return NewEvent(Kind.SIGNAL_WAIT, cid, name, {"timeout_at": timeout_at.isoformat() if timeout_at else None})


def side_effect(cid: int, value: Any) -> NewEvent:
    return NewEvent(Kind.SIDE_EFFECT, cid, "random", {"value": value})


def child(cid: int, run_id: str, input: Any = None) -> NewEvent:
    return NewEvent(Kind.CHILD_STARTED, cid, CHILD, {"run_id": run_id, "input": input, "version_hash": "c1"})


def kinds(journal: Journal, run_id: str = "run-1", after: int = 0) -> list[Kind]:
    """The kinds of a run's events after ``after``."""
    return [e.kind for e in journal.history(run_id, after)]


def assert_numbered(journal: Journal, run_id: str = "run-1") -> int:
    """Invariant 2: the run's events are 1..n, and ``last_seq`` is n. Returns n."""
    seqs = [e.seq for e in journal.history(run_id)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert journal.get_run(run_id).last_seq == len(seqs)
    return len(seqs)


def race(threads: int, attempt: Callable[[int], T]) -> list[T]:
    """Run ``attempt(k)`` in ``threads`` threads released together; return their results (errors re-raised)."""
    barrier = threading.Barrier(threads)
    results: list[T] = []
    errors: list[BaseException] = []

    def contend(k: int) -> None:
        try:
            barrier.wait(timeout=30)
            results.append(attempt(k))
        except BaseException as exc:  # re-raised in the test's own thread
            errors.append(exc)

    workers = [threading.Thread(target=contend, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not any(w.is_alive() for w in workers), "a contender hung"
    if errors:
        raise errors[0]
    return results


def replay(run_id: str = "run-1", workflow: str = WORKFLOW, version_hash: str = "h1") -> Dispatch:
    """The replay dispatch of a run (routed to its version)."""
    return Dispatch("replay", run_id, label=workflow, version_hash=version_hash)
