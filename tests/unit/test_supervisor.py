"""The supervisor on a SQLite journal: deadlines, heartbeat timeouts, throttled heartbeats, cancels, threads."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from continuum_celery import ActivityCancelled, heartbeat
from continuum_celery.journal.records import ActivityClaim
from continuum_celery.journal.schema import migrate
from continuum_celery.journal.sql import SQLJournal
from continuum_celery.supervisor import AttemptResult, attempt_info, supervise
from tests.journal.support import activity, claim, commit, start
from tests.support.stack import wait_until


class CountingJournal(SQLJournal):
    """A SQLite journal, counting heartbeat writes."""

    writes = 0

    def heartbeat(self, task_id: str, attempt: int, details: Any = None, *, record: bool = True) -> str:
        self.writes += record
        return super().heartbeat(task_id, attempt, details, record=record)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[CountingJournal]:
    url = f"sqlite:///{tmp_path / 'journal.sqlite3'}"
    migrate(url)
    sql = CountingJournal(url)
    try:
        yield sql
    finally:
        sql.close()


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    """What the supervisor logs at WARNING, read off its own logger (whatever other tests did to logging)."""
    logger = logging.getLogger("continuum_celery.supervisor")
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler, level, disabled = Keep(logging.WARNING), logger.level, logger.disabled
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.disabled = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled


def claimed(journal: SQLJournal, timeout: float = 30.0, heartbeat_timeout: float | None = None) -> ActivityClaim:
    start(journal)
    cmd = activity(1, timeout=timeout)
    if heartbeat_timeout:
        cmd = type(cmd)(cmd.kind, 1, cmd.name, {**cmd.payload, "heartbeat_timeout": heartbeat_timeout})
    commit(journal, claim(journal), [cmd])
    got = journal.claim_activity("run-1:1", 1, "w1")
    assert got is not None
    return got


def ran(fn: Any) -> Any:
    def attempt() -> AttemptResult:
        try:
            return AttemptResult(fn(), None, True, 0.0)
        except Exception as exc:
            return AttemptResult(None, {"type": type(exc).__name__, "message": str(exc)}, True, 0.0)

    return attempt


def test_a_quick_attempt_returns_its_result_and_threads_are_reused(journal: CountingJournal) -> None:
    task = claimed(journal)
    for i in range(20):
        assert supervise(journal, task, ran(lambda i=i: i), owner="w1").attempt == AttemptResult(i, None, True, 0.0)
    assert sum(t.name == "continuum-attempt" for t in threading.enumerate()) <= 2


def test_an_attempt_past_its_deadline_is_given_up_and_its_heartbeat_raises(
    journal: CountingJournal, warnings_logged: list[str]
) -> None:
    task = claimed(journal, timeout=0.3)
    release, raised = threading.Event(), []

    def slow() -> str:
        release.wait(10)
        try:
            heartbeat()
        except ActivityCancelled as exc:
            raised.append(exc.reason)
        return "late"

    verdict = supervise(journal, task, ran(slow), owner="w1")
    assert verdict.attempt is not None and verdict.attempt.error is not None
    assert verdict.attempt.error["type"] == "ActivityTimeout" and verdict.attempt.retryable
    release.set()
    wait_until(lambda: warnings_logged, 10, "the abandoned attempt's end to be logged", interval=0.01)
    assert raised == ["abandoned"] and "its end is dropped" in " ".join(warnings_logged)


def test_heartbeats_are_throttled_and_their_stop_fails_the_attempt(journal: CountingJournal) -> None:
    task = claimed(journal, heartbeat_timeout=0.3)

    def beats_then_stalls() -> None:
        for i in range(200):
            heartbeat({"i": i})
        time.sleep(3)  # the stall itself: ten times the heartbeat_timeout

    verdict = supervise(journal, task, ran(beats_then_stalls), owner="w1")
    assert verdict.attempt is not None and verdict.attempt.error is not None
    assert "sent no heartbeat for 0.3 s" in verdict.attempt.error["message"]
    assert journal.writes == 1  # 200 calls within the throttle window: one write


def test_a_cancel_detaches_an_inline_attempt_which_records_its_own_end(journal: CountingJournal) -> None:
    task = claimed(journal)
    recorded: list[AttemptResult] = []
    release = threading.Event()
    threading.Timer(0.2, lambda: journal.request_cancel("run-1")).start()
    verdict = supervise(
        journal, task, ran(lambda: release.wait(10) and "done"), owner="w1", watch_run=True, record_late=recorded.append
    )
    assert verdict.attempt is None and verdict.detached
    release.set()
    wait_until(lambda: recorded, 10, "the detached attempt to record its end", interval=0.01)
    assert [r.result for r in recorded] == ["done"]


def test_activity_info_has_a_deadline_only_when_the_attempt_has_a_time_limit(journal: CountingJournal) -> None:
    got = claimed(journal, timeout=30.0)
    before = datetime.now(timezone.utc)
    timed = attempt_info(got, 30.0)
    assert timed.deadline is not None
    assert before + timedelta(seconds=30) <= timed.deadline <= datetime.now(timezone.utc) + timedelta(seconds=30)
    assert attempt_info(got, float("inf")).deadline is None
