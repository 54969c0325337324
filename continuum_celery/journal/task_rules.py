"""The journal's decisions about activity tasks, as pure functions: storage code only reads and writes rows.

What a scheduled command's task row holds, which outcome event a finished task
becomes, how long a retry waits, how long an attempt's lease lasts, and the
error each missed limit records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..events import Kind, NewEvent
from .records import ActivityClaim

#: Commands that create an activity task row, and the row's kind.
SCHEDULE_KINDS = {Kind.ACTIVITY_SCHEDULED: "activity", Kind.COMPENSATION_SCHEDULED: "compensation"}


#: (task kind, final state) -> the outcome event it becomes in the run's journal.
TASK_OUTCOMES = {
    ("activity", "completed"): Kind.ACTIVITY_COMPLETED,
    ("activity", "failed"): Kind.ACTIVITY_FAILED,
    ("compensation", "completed"): Kind.COMPENSATION_COMPLETED,
    ("compensation", "failed"): Kind.COMPENSATION_FAILED,
}


def retry_delay(policy: Mapping[str, Any], failed_attempt: int) -> float:
    """Seconds to wait after attempt ``failed_attempt`` failed: exponential backoff, capped."""
    interval = float(policy.get("initial_interval", 1.0)) * float(policy.get("backoff", 2.0)) ** (failed_attempt - 1)
    return min(interval, float(policy.get("max_interval", 60.0)))


def task_outcome(kind: str, state: str, result: Any, error: Any, attempts: int) -> tuple[Kind, dict[str, Any]]:
    """The outcome event (kind, payload) of a task row that ended ``completed`` or ``failed``."""
    if state == "completed":
        return TASK_OUTCOMES[(kind, state)], {"result": result, "attempts": attempts}
    return TASK_OUTCOMES[(kind, state)], {"error": error, "attempts": attempts}


def cancelled_task_outcome(kind: str, attempt: int) -> tuple[Kind, dict[str, Any]]:
    """The failure event of a task that never started because its run was cancelled."""
    error = {
        "type": "RunCancelled",
        "module": "continuum_celery.errors",
        "message": "the run was cancelled before this task started",
    }
    event = Kind.ACTIVITY_FAILED if kind == "activity" else Kind.COMPENSATION_FAILED
    return event, {"error": error, "attempts": attempt - 1}


def _activity_timeout(message: str) -> dict[str, Any]:
    """An encoded ``ActivityTimeout`` (the body sees it as ``ActivityFailed.error``)."""
    return {"type": "ActivityTimeout", "module": "continuum_celery.errors", "message": message}


def attempt_timeout_error(attempt: int, timeout: float | None, owner: str | None) -> dict[str, Any]:
    """The error recorded when an attempt overran its start-to-close timeout (or its worker died)."""
    return _activity_timeout(
        f"attempt {attempt} did not finish within its timeout of {timeout} s "
        f"(on worker {owner}); raise the activity's timeout= if it needs longer"
    )


def heartbeat_timeout_error(attempt: int, heartbeat_timeout: float | None, owner: str | None) -> dict[str, Any]:
    """The error recorded when an attempt sent no heartbeat for its ``heartbeat_timeout``."""
    return _activity_timeout(
        f"attempt {attempt} sent no heartbeat for {heartbeat_timeout} s (its heartbeat_timeout, "
        f"on worker {owner}); call heartbeat() more often, or the worker died"
    )


def schedule_to_close_error(attempt: int, schedule_to_close: float, last: dict[str, Any] | None) -> dict[str, Any]:
    """The error of a task whose attempts together ran out of its ``schedule_to_close``."""
    cause = f"; last attempt: {last.get('type')}: {last.get('message')}" if last else ""
    return _activity_timeout(
        f"the activity did not complete within its schedule_to_close of {schedule_to_close:g} s "
        f"({attempt} attempt(s){cause})"
    )


def close_in(created_at: datetime | None, schedule_to_close: float | None, now: datetime) -> float | None:
    """Seconds left of a task's ``schedule_to_close`` (all attempts together); None when it has none."""
    if not schedule_to_close or created_at is None:
        return None
    return (created_at + timedelta(seconds=schedule_to_close) - now).total_seconds()


def may_retry_within(close: float | None, delay: float) -> bool:
    """Whether a retry due in ``delay`` seconds still starts before the task's ``schedule_to_close``."""
    return close is None or delay < close


def expired_attempt_error(
    attempt: int,
    timeout: float | None,
    heartbeat_timeout: float | None,
    started_at: datetime | None,
    owner: str | None,
    now: datetime,
) -> dict[str, Any]:
    """The error of an attempt whose lease ran out: which of its two limits it missed."""
    deadline = started_at + timedelta(seconds=timeout) if started_at is not None and timeout else None
    if heartbeat_timeout and (deadline is None or deadline > now):
        return heartbeat_timeout_error(attempt, heartbeat_timeout, owner)
    return attempt_timeout_error(attempt, timeout, owner)


def heartbeat_lease(
    started_at: datetime | None, timeout: float | None, heartbeat_timeout: float, now: datetime
) -> float:
    """Seconds a heartbeating attempt's lease lasts from ``now``: to its next heartbeat due, not past its deadline."""
    if started_at is None or not timeout:
        return heartbeat_timeout
    left = (started_at + timedelta(seconds=timeout) - now).total_seconds()
    return max(0.0, min(heartbeat_timeout, left))


#: What ``Journal.heartbeat`` answers: the attempt goes on, its run was cancelled, or it is over.
ATTEMPT_RUNNING, ATTEMPT_CANCELLED, ATTEMPT_ABANDONED = "running", "cancelled", "abandoned"


def attempt_liveness(running: bool, may_go_on: bool) -> str:
    """The answer to a heartbeat of an attempt (``running``: the row still runs this attempt;
    ``may_go_on``: nothing overtook it, in the sense of ``_may_retry``: no cancel, run not ended)."""
    if not running:
        return ATTEMPT_ABANDONED
    return ATTEMPT_RUNNING if may_go_on else ATTEMPT_CANCELLED


def orphaned_attempt_error(attempt: int, owner: str | None, run_id: str) -> dict[str, Any]:
    """The error recorded when a claim finds an inline attempt whose replay task lost the run's lease."""
    return _activity_timeout(
        f"attempt {attempt} ran inside a replay task of run {run_id} whose lease expired "
        f"(the worker {owner} died or stalled)"
    )


def task_id(run_id: str, command_id: int) -> str:
    """The id of the task row a run's command creates (stable, so a replayed command finds it)."""
    return f"{run_id}:{command_id}"


@dataclass(frozen=True)
class TaskSpec:
    """What an ``activity_scheduled`` / ``compensation_scheduled`` command puts on its task row."""

    kind: str
    arguments: dict[str, Any]
    queue: str | None
    max_attempts: int
    retry_policy: dict[str, Any]
    timeout: float
    idempotency_key: str | None
    heartbeat_timeout: float | None = None
    schedule_to_close: float | None = None


def task_spec(cmd: NewEvent, default_timeout: float) -> TaskSpec:
    """Read a schedule command's payload into its task row's fields."""
    kind = SCHEDULE_KINDS[cmd.kind]
    payload = cmd.payload
    arguments = {"args": payload.get("args", []), "kwargs": payload.get("kwargs", {})}
    if kind == "compensation":
        arguments["result"] = payload.get("result")
        arguments["for_command"] = payload.get("for_command")
    retry = payload.get("retry") or {"max_attempts": 1}
    return TaskSpec(
        kind=kind,
        arguments=arguments,
        queue=payload.get("queue"),
        max_attempts=int(retry.get("max_attempts", 1)),
        retry_policy=dict(retry),
        timeout=payload.get("timeout") or default_timeout,
        idempotency_key=(payload.get("idempotency_key") or None) if kind == "activity" else None,
        heartbeat_timeout=payload.get("heartbeat_timeout") or None,
        schedule_to_close=payload.get("schedule_to_close") or None,
    )


def claim_of(
    spec: TaskSpec, task: str, run_id: str, cmd: NewEvent, workflow: str, trace_context: dict[str, str] | None
) -> ActivityClaim:
    """The first attempt of a task inserted already claimed (an inline attempt)."""
    return ActivityClaim(
        task_id=task,
        run_id=run_id,
        kind=spec.kind,
        name=cmd.name or "",
        args=list(spec.arguments.get("args", [])),
        kwargs=dict(spec.arguments.get("kwargs", {})),
        attempt=1,
        max_attempts=spec.max_attempts,
        retry_policy=dict(spec.retry_policy),
        timeout=spec.timeout,
        idempotency_key=spec.idempotency_key,
        compensated_result=spec.arguments.get("result"),
        workflow=workflow,
        trace_context=dict(trace_context or {}),
        heartbeat_timeout=spec.heartbeat_timeout,
        schedule_to_close=spec.schedule_to_close,
        close_in=spec.schedule_to_close,
    )
