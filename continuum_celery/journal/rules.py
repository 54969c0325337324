"""The journal's decisions as pure functions, so storage code only reads and writes rows.

Nothing here touches storage: given what a row holds, these functions say what
the journal records (which outcome event a finished task or child becomes, how
a run ends, how long a retry waits, what a scheduled command's task row holds).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ..errors import LeaseLost, RunConflict
from ..events import Kind, NewEvent
from ..replay import Cancelled, Complete, ContinueAsNew, Fail, Outcome
from .records import ActivityClaim, Lease, NewRun

#: Longest wait before the sweep re-sends a dispatched row, in multiples of ``redispatch_after``.
REDISPATCH_BACKOFF_CAP = 8
#: ``last_seen_at`` of a worker's version rows after its clean shutdown: never live again, and kept
#: (rather than deleted) so that ``continuum versions prune`` still finds the version and its queue.
STOPPED_AT = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: Signals one claim hands to its step at most (a step consumes those its new waits take, in one commit).
INBOX_BATCH = 1000
#: Commands that create an activity task row, and the row's kind.
SCHEDULE_KINDS = {Kind.ACTIVITY_SCHEDULED: "activity", Kind.COMPENSATION_SCHEDULED: "compensation"}
#: (task kind, final state) -> the outcome event it becomes in the run's journal.
TASK_OUTCOMES = {
    ("activity", "completed"): Kind.ACTIVITY_COMPLETED,
    ("activity", "failed"): Kind.ACTIVITY_FAILED,
    ("compensation", "completed"): Kind.COMPENSATION_COMPLETED,
    ("compensation", "failed"): Kind.COMPENSATION_FAILED,
}
#: A child run's final state -> the outcome event its parent sees.
CHILD_OUTCOMES = {
    "completed": Kind.CHILD_COMPLETED,
    "failed": Kind.CHILD_FAILED,
    "cancelled": Kind.CHILD_CANCELLED,
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


#: The command id of a run's deadline timer (the body's commands count from 1).
DEADLINE_COMMAND = 0


def started_payload(run: NewRun) -> dict[str, Any]:
    """The ``run_started`` event of a new run."""
    payload = {"input": run.input, "workflow": run.workflow, "version_hash": run.version_hash}
    return {**payload, "timeout": run.timeout} if run.timeout else payload


def timed_out(fire_at: datetime) -> tuple[Kind, dict[str, Any]]:
    """The event a run's deadline timer appends when it fires."""
    return Kind.RUN_TIMED_OUT, {"deadline": fire_at.isoformat()}


def child_outcome(state: str, run_id: str, result: Any, error: Any) -> tuple[Kind, dict[str, Any]]:
    """The outcome event (kind, payload) a parent gets when its child ends ``state``."""
    return CHILD_OUTCOMES[state], {"run_id": run_id, "result": result, "error": error}


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


def wait_deadline(cmd: NewEvent) -> datetime | None:
    """When a ``timer_scheduled`` fires or a ``signal_wait`` times out (None: never)."""
    at = cmd.payload.get("fire_at") or cmd.payload.get("timeout_at")
    return datetime.fromisoformat(at) if at else None


def lease_lost(lease: Lease, state: str | None, token: int | None) -> LeaseLost:
    """The error for a write under ``lease`` on a run now ``state`` with ``token`` (None: no such run)."""
    return LeaseLost(
        f"run {lease.run_id}: lease token {lease.token} is stale"
        + ("" if state is None else f" (the run is {state} with token {token})")
        + "; another worker owns the run, so this write was discarded.",
        run_id=lease.run_id,
        token=lease.token,
    )


def renewal_refused(lease: Lease) -> LeaseLost:
    """The error for renewing ``lease`` after another worker took the run over (or the run moved on)."""
    return LeaseLost(
        f"run {lease.run_id}: lease token {lease.token} could not be renewed; another worker took over.",
        run_id=lease.run_id,
        token=lease.token,
    )


def inline_attempt_lost(lease: Lease, claim: ActivityClaim) -> LeaseLost:
    """The error for folding an inline attempt the lease holder no longer owns (timed out, or retried)."""
    return LeaseLost(
        f"run {lease.run_id}: inline attempt {claim.attempt} of {claim.name} is no longer this worker's",
        run_id=lease.run_id,
        token=lease.token,
    )


def run_conflict(run_id: str, workflow: str) -> RunConflict:
    """The error for starting ``run_id`` again with another workflow or input (it names a run of ``workflow``)."""
    return RunConflict(
        f"run id {run_id!r} already names a run of {workflow} with another input; "
        "use a new run_id, or the same input to get the existing run's handle.",
        run_id=run_id,
    )


def child_run(
    cmd: NewEvent, parent_id: str, correlation_id: str, child_versions: Mapping[str, tuple[str, int]]
) -> NewRun:
    """The run a ``child_started`` command of ``parent_id`` starts (on the child workflow's current version)."""
    version_hash, version = child_versions[cmd.name or ""]
    return NewRun(
        id=cmd.payload["run_id"],
        workflow=cmd.name or "",
        version_hash=version_hash,
        version=version,
        input=cmd.payload.get("input"),
        parent_run_id=parent_id,
        parent_command_id=cmd.command_id,
        correlation_id=correlation_id,
    )


def continued_run(run: Any, trace_context: dict[str, str], outcome: ContinueAsNew, version: tuple[str, int]) -> NewRun:
    """The run that continues ``run`` (a run row) as new: same workflow, parent and correlation, the new input."""
    return NewRun(
        id=continued_run_id(run.id),
        workflow=run.workflow,
        version_hash=version[0],
        version=version[1],
        input=outcome.input,
        parent_run_id=run.parent_run_id,
        parent_command_id=run.parent_command_id,
        correlation_id=run.correlation_id,
        continued_from_run_id=run.id,
        trace_context=trace_context,
    )


def continued_run_id(run_id: str) -> str:
    """The id of the run that continues ``run_id`` as new (derived, so a retried commit names the same run)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"continuum:{run_id}:continued"))


@dataclass(frozen=True)
class Ending:
    """How a run ends: its state, its terminal event, and the run fields (``result``/``error``) to set."""

    state: str
    kind: Kind
    payload: dict[str, Any]
    fields: dict[str, Any] = field(default_factory=dict)
    next_run_id: str | None = None


def ending(run_id: str, outcome: Outcome) -> Ending:
    """The terminal record of a run whose body decided ``outcome``."""
    if isinstance(outcome, Complete):
        return Ending("completed", Kind.RUN_COMPLETED, {"result": outcome.result}, {"result": outcome.result})
    if isinstance(outcome, (Fail, Cancelled)):
        cancelled = isinstance(outcome, Cancelled)
        return Ending(
            "cancelled" if cancelled else "failed",
            Kind.RUN_CANCELLED if cancelled else Kind.RUN_FAILED,
            {"error": outcome.error},
            {"error": outcome.error},
        )
    assert isinstance(outcome, ContinueAsNew)
    next_id = continued_run_id(run_id)
    return Ending(
        "continued", Kind.RUN_CONTINUED, {"next_run_id": next_id}, {"result": {"continued_to": next_id}}, next_id
    )


def summarise_versions(
    rows: Iterable[Mapping[Any, Any]], pinned: Mapping[tuple[str, str], int]
) -> list[dict[str, Any]]:
    """Fold per-host version rows and pinned-run counts into one entry per (workflow, version_hash).

    Args:
        rows: ``workflow_versions`` rows, ordered by workflow and version.
        pinned: non-terminal runs per (workflow, version_hash).
    """
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        entry = out.setdefault(
            (r["workflow"], r["version_hash"]),
            {
                "workflow": r["workflow"],
                "version_hash": r["version_hash"],
                "version": r["version"],
                "module": r["module"],
                "hostnames": [],
                "first_seen_at": r["first_seen_at"],
                "last_seen_at": r["last_seen_at"],
                "pinned_runs": pinned.get((r["workflow"], r["version_hash"]), 0),
                "workers": [],
            },
        )
        entry["hostnames"].append(r["hostname"])
        entry["workers"].append({"hostname": r["hostname"], "last_seen_at": r["last_seen_at"]})
        entry["first_seen_at"] = min(entry["first_seen_at"], r["first_seen_at"])
        entry["last_seen_at"] = max(entry["last_seen_at"], r["last_seen_at"])
    for (workflow, version_hash), n in pinned.items():
        out.setdefault(
            (workflow, version_hash),
            {
                "workflow": workflow,
                "version_hash": version_hash,
                "version": None,
                "module": None,
                "hostnames": [],
                "first_seen_at": None,
                "last_seen_at": None,
                "pinned_runs": n,
                "workers": [],
            },
        )
    return list(out.values())


def stale_versions(entries: Iterable[Mapping[str, Any]], live_after: datetime) -> list[tuple[str, str]]:
    """The (workflow, version_hash) of :func:`summarise_versions` entries nothing needs any more.

    A version is stale when workers once recorded it, none of them was seen after ``live_after``
    (or each stopped cleanly), and no unfinished run is pinned to it: its queue and rows can go.
    """
    return [
        (e["workflow"], e["version_hash"])
        for e in entries
        if e["workers"]
        and e["pinned_runs"] == 0
        and all(w["last_seen_at"] is None or w["last_seen_at"] < live_after for w in e["workers"])
    ]
