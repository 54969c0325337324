"""One attempt's function on a thread of its own, watched: its deadline, its heartbeats, its run's cancel.

The task that claimed an attempt (a replay task running it inline, or a
``continuum.activity`` task) waits for it instead of running it, so it can stop
waiting at the attempt's start-to-close deadline, or once its heartbeats stop for
``heartbeat_timeout``, and record that end itself: the retry policy applies at
once, with or without a sweep. Inline, the wait also looks at the run every
:data:`CANCEL_POLL` seconds, so a cancel reaches a body blocked on its activity.

Python cannot stop a thread. An attempt given up on runs on until its function
returns; its ``heartbeat()`` raises ``ActivityCancelled`` and what it returns is
dropped (the journal holds that attempt's end already, so a late record would be
stale anyway). Both paths run this code, so an activity cannot tell them apart.
"""

from __future__ import annotations

import contextvars
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from . import telemetry
from .activity_context import ActivityInfo, current_link
from .errors import ActivityCancelled
from .journal.base import Journal
from .journal.records import ActivityClaim
from .journal.task_rules import (
    ATTEMPT_ABANDONED,
    ATTEMPT_CANCELLED,
    attempt_timeout_error,
    heartbeat_timeout_error,
    schedule_to_close_error,
)

log = logging.getLogger(__name__)

#: Seconds between two looks at the run while an inline attempt runs (how soon a cancel is seen).
CANCEL_POLL = 1.0
#: Most seconds between two heartbeat writes of one attempt (a third of its heartbeat_timeout if less).
HEARTBEAT_THROTTLE = 1.0
#: Seconds an idle attempt thread waits for more work before it ends.
IDLE_EXIT = 30.0


@dataclass(frozen=True)
class AttemptResult:
    """What running an attempt's function produced (nothing is recorded yet)."""

    result: Any
    error: dict[str, Any] | None
    retryable: bool
    duration: float


@dataclass(frozen=True)
class Verdict:
    """How waiting on an attempt ended.

    ``attempt`` is the end to record (the function's, or its timeout); None when there is
    nothing to record: the attempt is over in the journal already, or (``detached``) it
    goes on by itself after a cancel and records its own end when its function returns.
    """

    attempt: AttemptResult | None
    detached: bool = False


class _Threads:
    """Daemon threads that run attempts, reused while busy (an attempt given up on keeps its thread)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put(job)
                return
        threading.Thread(target=self._loop, args=(job,), name="continuum-attempt", daemon=True).start()

    def _loop(self, job: Callable[[], None]) -> None:
        while True:
            job()
            with self._lock:
                self._idle += 1
            while True:
                try:
                    job = self._jobs.get(timeout=IDLE_EXIT)
                    break
                except queue.Empty:
                    with self._lock:
                        if self._jobs.empty():  # no job was handed to an idle thread meanwhile
                            self._idle -= 1
                            return


_threads = _Threads()


def _reset_after_fork() -> None:
    global _threads
    _threads = _Threads()  # the parent's threads did not survive the fork


os.register_at_fork(after_in_child=_reset_after_fork)


class _Watch:
    """The attempt's side of the wait: its heartbeats, its end, and whether its waiter gave up."""

    def __init__(self, journal: Journal, claim: ActivityClaim, info: ActivityInfo) -> None:
        self.info = info
        self.last_beat = time.monotonic()
        self._journal = journal
        self._claim = claim
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.result: AttemptResult | None = None
        self._gave_up: str | None = None
        self._late: Callable[[AttemptResult], object] | None = None
        # Heartbeats write at most this often (a loop may call heartbeat() on every row it handles).
        self._throttle = min(HEARTBEAT_THROTTLE, (claim.heartbeat_timeout or HEARTBEAT_THROTTLE) / 3)
        self._written = -float("inf")
        self._pending: Any = None

    def beat(self, details: Any) -> None:
        if self._gave_up == ATTEMPT_ABANDONED:
            raise self._cancelled(ATTEMPT_ABANDONED)
        now = time.monotonic()
        self.last_beat = now
        if details is not None:
            self._pending = details
        if now - self._written < self._throttle:
            return  # written lately: the newest details go with the next write (or the attempt's end)
        self._written = now
        details, self._pending = self._pending, None
        status = self._journal.heartbeat(self._claim.task_id, self._claim.attempt, details)
        if status != "running":
            raise self._cancelled(status)

    def _flush(self) -> None:
        """Write details a throttled heartbeat held back, so the next attempt sees them."""
        if self._pending is not None and self._gave_up is None:
            try:
                self._journal.heartbeat(self._claim.task_id, self._claim.attempt, self._pending)
            except Exception:
                log.warning("could not record the last heartbeat of %s", self._claim.task_id, exc_info=True)

    def _cancelled(self, reason: str) -> ActivityCancelled:
        claim = self._claim
        why = "its run was cancelled" if reason == ATTEMPT_CANCELLED else "the attempt was given up (timed out)"
        return ActivityCancelled(
            f"activity {claim.name} attempt {claim.attempt} of run {claim.run_id}: {why}; "
            "stop and clean up, its result will not be recorded.",
            activity=claim.name,
            attempt=claim.attempt,
            reason=reason,
        )

    def run(self, fn: Callable[[], AttemptResult]) -> None:
        token = current_link().set(self)
        try:
            result = fn()
        finally:
            current_link().reset(token)
        if result.error is not None:
            self._flush()
        with self._lock:
            self.result, late, gave_up = result, self._late, self._gave_up
            self._done.set()
        if gave_up is not None and late is None:
            log_dropped(self._claim)
        if late is not None:
            try:
                late(result)
            except Exception:
                log.warning("could not record the end of detached attempt %s", self._claim.task_id, exc_info=True)

    def wait(self, seconds: float) -> bool:
        return self._done.wait(None if seconds == float("inf") else max(0.0, seconds))

    def give_up(self, reason: str, late: Callable[[AttemptResult], object] | None = None) -> bool:
        """Stop waiting (False: the function has ended meanwhile; take ``result``)."""
        with self._lock:
            if self.result is not None:
                return False
            self._gave_up, self._late = reason, late
            return True


def log_dropped(claim: ActivityClaim) -> None:
    """Say that an attempt ended after it was given up, and that its end is not recorded."""
    telemetry.run_logger(__name__, claim.run_id, claim.workflow or None).warning(
        "activity %s attempt %d ended after it was given up (timed out, cancelled or its run ended); "
        "its end is dropped",
        claim.name,
        claim.attempt,
    )


def attempt_info(claim: ActivityClaim, limit: float) -> ActivityInfo:
    """What ``activity_info()`` tells the attempt ``claim``, which must end within ``limit`` seconds."""
    deadline = None if limit == float("inf") else datetime.now(timezone.utc) + timedelta(seconds=limit)
    return ActivityInfo(
        run_id=claim.run_id,
        workflow=claim.workflow,
        activity=claim.name,
        task_id=claim.task_id,
        attempt=claim.attempt,
        max_attempts=claim.max_attempts,
        deadline=deadline,
        heartbeat_timeout=claim.heartbeat_timeout,
        last_heartbeat=claim.last_heartbeat,
    )


def supervise(
    journal: Journal,
    claim: ActivityClaim,
    fn: Callable[[], AttemptResult],
    *,
    owner: str,
    watch_run: bool = False,
    record_late: Callable[[AttemptResult], object] | None = None,
) -> Verdict:
    """Run ``fn`` (the attempt) on an attempt thread and wait for its end, its deadline or (``watch_run``) a cancel.

    With ``watch_run``, a cancel of the run detaches the attempt: ``record_late`` records its
    end when the function returns (a saga may still compensate it).
    """
    began = time.monotonic()
    limit = claim.timeout or float("inf")
    closing = claim.close_in is not None and claim.close_in < limit  # schedule_to_close comes first
    if closing:
        limit = max(0.0, claim.close_in or 0.0)
        if limit == 0.0:  # no time left for this attempt: it does not run
            error = schedule_to_close_error(claim.attempt - 1, claim.schedule_to_close or 0.0, None)
            return Verdict(AttemptResult(None, error, False, 0.0))
    watch = _Watch(journal, claim, attempt_info(claim, limit))
    context = contextvars.copy_context()  # the attempt sees the caller's tracing span
    _threads.submit(lambda: context.run(watch.run, fn))
    deadline = began + limit
    next_look = began + CANCEL_POLL if watch_run else float("inf")
    while True:
        beat_due = watch.last_beat + claim.heartbeat_timeout if claim.heartbeat_timeout else float("inf")
        if watch.wait(min(deadline, beat_due, next_look) - time.monotonic()):
            return Verdict(watch.result)
        now = time.monotonic()
        if now >= deadline or now >= watch.last_beat + (claim.heartbeat_timeout or float("inf")):
            if not watch.give_up(ATTEMPT_ABANDONED):
                return Verdict(watch.result)
            return Verdict(_overrun(claim, owner, missed_deadline=now >= deadline, closing=closing, took=now - began))
        if now >= next_look:
            next_look = now + CANCEL_POLL
            verdict = _look(journal, claim, watch, record_late)
            if verdict is not None:
                return verdict


def _overrun(claim: ActivityClaim, owner: str, *, missed_deadline: bool, closing: bool, took: float) -> AttemptResult:
    """The end recorded for an attempt given up at a limit: which limit, and whether a retry may follow."""
    if not missed_deadline:
        error = heartbeat_timeout_error(claim.attempt, claim.heartbeat_timeout, owner)
    elif closing:  # the schedule_to_close is spent: no retry
        return AttemptResult(
            None, schedule_to_close_error(claim.attempt, claim.schedule_to_close or 0.0, None), False, took
        )
    else:
        error = attempt_timeout_error(claim.attempt, claim.timeout, owner)
    return AttemptResult(None, error, True, took)


def _look(
    journal: Journal, claim: ActivityClaim, watch: _Watch, record_late: Callable[[AttemptResult], object] | None
) -> Verdict | None:
    """Ask the journal whether the attempt should go on; the verdict when the wait ends here."""
    try:
        status = journal.heartbeat(claim.task_id, claim.attempt, record=False)
    except Exception:
        log.warning("could not check run %s for a cancel; will look again", claim.run_id, exc_info=True)
        return None
    if status == ATTEMPT_CANCELLED:
        return Verdict(None, detached=True) if watch.give_up(status, record_late) else Verdict(watch.result)
    if status == ATTEMPT_ABANDONED:
        return Verdict(None) if watch.give_up(status) else Verdict(watch.result)
    return None
