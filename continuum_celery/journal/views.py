"""What operators read about a run: its timeline, lineage, live attempts and pending work.

Plain values the journal's read queries return (see :mod:`.sql_reads`), for
``continuum runs show`` and the doctor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ..serialization import loads
from .records import RunRecord


@dataclass(frozen=True)
class TimelineEntry:
    """One journal event with the time it was written."""

    seq: int
    kind: str
    command_id: int | None
    name: str | None
    payload: dict[str, Any]
    at: datetime


@dataclass(frozen=True)
class RunLink:
    """Another run related to the one shown: its id, workflow and state."""

    id: str
    workflow: str
    state: str


@dataclass(frozen=True)
class Lineage:
    """Where a run sits among its relatives."""

    parent: RunLink | None
    parent_command_id: int | None
    children: list[RunLink]
    continued_from: RunLink | None
    continued_to: RunLink | None
    correlation_id: str


@dataclass(frozen=True)
class AttemptView:
    """An activity task's current attempt, as far as its liveness goes.

    ``deadline`` is when the attempt times out (start-to-close), ``heartbeat_due`` when it
    fails for want of a heartbeat (None: no ``heartbeat_timeout``, or not running).
    """

    task_id: str
    activity: str
    kind: str
    state: str
    attempt: int
    max_attempts: int
    owner: str | None
    started_at: datetime | None
    deadline: datetime | None
    heartbeat_timeout: float | None
    heartbeat_at: datetime | None
    heartbeat_due: datetime | None
    last_heartbeat: Any


def attempt_view(task: Any) -> AttemptView:
    """The liveness view of an ``activity_tasks`` row."""
    started = task.started_at if task.state == "running" else None
    deadline = started + timedelta(seconds=task.timeout) if started is not None and task.timeout else None
    beat_from = task.heartbeat_at if task.heartbeat_at and started and task.heartbeat_at >= started else started
    beat_due = beat_from + timedelta(seconds=task.heartbeat_timeout) if beat_from and task.heartbeat_timeout else None
    return AttemptView(
        task_id=task.id,
        activity=task.name,
        kind=task.kind,
        state=task.state,
        attempt=task.attempt,
        max_attempts=task.max_attempts,
        owner=task.owner if task.state == "running" else None,
        started_at=started,
        deadline=deadline,
        heartbeat_timeout=task.heartbeat_timeout,
        heartbeat_at=task.heartbeat_at,
        heartbeat_due=beat_due,
        last_heartbeat=loads(task.heartbeat_details),
    )


@dataclass(frozen=True)
class RunDetail:
    """Everything ``runs show`` prints."""

    run: RunRecord
    lineage: Lineage
    timeline: list[TimelineEntry]
    #: Attempts running now, and any task whose attempts recorded a heartbeat.
    attempts: list[AttemptView] = field(default_factory=list)


@dataclass(frozen=True)
class PendingWork:
    """What a non-terminal run is waiting on, straight from its rows."""

    run: RunRecord
    row: Any
    timers: list[Any]
    tasks: list[Any]
    children: list[Any]
    inbox: list[str]
    version_hosts: list[str]
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
