"""Read-only views of the SQL journal for operators: a run's lineage, its timeline, its pending work.

The CLI (``continuum runs show``) and the doctor read through here. Nothing in
this module writes; every query runs in one short read transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from .errors import RunNotFound
from .journal.base import RunRecord
from .journal.schema import activity_tasks, events, runs, signals, timers, workflow_versions
from .journal.sql import SQLJournal
from .journal.sql_base import run_record
from .serialization import loads
from .states import TERMINAL


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


def db_now(conn: sa.Connection) -> datetime:
    """The database's clock (the one leases and timers are judged by); the local clock on SQLite."""
    if conn.dialect.name == "sqlite":
        return datetime.now(timezone.utc)
    value: datetime = conn.execute(sa.select(sa.func.now())).scalar_one()
    return value


def _link(row: Any) -> RunLink | None:
    return None if row is None else RunLink(row.id, row.workflow, row.state)


def _brief(conn: sa.Connection, where: Any) -> Any:
    return conn.execute(sa.select(runs.c.id, runs.c.workflow, runs.c.state).where(where).limit(1)).first()


def run_detail(journal: SQLJournal, run_id: str, max_events: int | None = None) -> RunDetail:
    """The run, its lineage, and its history with timestamps (the last ``max_events`` when given).

    Raises:
        RunNotFound: no run has that id.
    """
    with journal.engine.connect() as conn:
        row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}", run_id=run_id)
        children = conn.execute(
            sa.select(runs.c.id, runs.c.workflow, runs.c.state)
            .where(runs.c.parent_run_id == run_id)
            .order_by(runs.c.created_at, runs.c.id)
        ).all()
        lineage = Lineage(
            parent=_link(_brief(conn, runs.c.id == row.parent_run_id)) if row.parent_run_id else None,
            parent_command_id=row.parent_command_id,
            children=[RunLink(c.id, c.workflow, c.state) for c in children],
            continued_from=(
                _link(_brief(conn, runs.c.id == row.continued_from_run_id)) if row.continued_from_run_id else None
            ),
            continued_to=_link(_brief(conn, runs.c.continued_from_run_id == run_id)),
            correlation_id=row.correlation_id,
        )
        query = sa.select(events).where(events.c.run_id == run_id).order_by(events.c.seq)
        if max_events is not None:
            query = query.where(events.c.seq > row.last_seq - max_events)
        timeline = [
            TimelineEntry(e.seq, e.kind, e.command_id, e.name, loads(e.payload) or {}, e.created_at)
            for e in conn.execute(query)
        ]
        attempts = conn.execute(
            sa.select(activity_tasks)
            .where(
                activity_tasks.c.run_id == run_id,
                sa.or_(activity_tasks.c.state == "running", activity_tasks.c.heartbeat_at.is_not(None)),
            )
            .order_by(activity_tasks.c.command_id)
        ).all()
    return RunDetail(run_record(row), lineage, timeline, [attempt_view(t) for t in attempts])


def open_run_ids(journal: SQLJournal, limit: int) -> list[str]:
    """Ids of non-terminal runs, oldest first, at most ``limit``."""
    with journal.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(runs.c.id)
                .where(runs.c.state.not_in(TERMINAL))
                .order_by(runs.c.created_at, runs.c.id)
                .limit(limit)
            ).scalars()
        )


def pending_work(journal: SQLJournal, run_id: str) -> PendingWork:
    """The rows that say what ``run_id`` waits on: timers, unfinished or unrecorded tasks, children, inbox.

    Raises:
        RunNotFound: no run has that id.
    """
    with journal.engine.connect() as conn:
        now = db_now(conn)
        row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}", run_id=run_id)
        pending_timers = conn.execute(
            sa.select(timers)
            .where(timers.c.run_id == run_id, timers.c.state == "pending")
            .order_by(timers.c.command_id)
        ).all()
        tasks = conn.execute(
            sa.select(activity_tasks)
            .where(
                activity_tasks.c.run_id == run_id,
                sa.or_(
                    activity_tasks.c.state.in_(("scheduled", "running")),
                    sa.and_(
                        activity_tasks.c.state.in_(("completed", "failed")),
                        activity_tasks.c.outcome_seq.is_(None),
                    ),
                ),
            )
            .order_by(activity_tasks.c.command_id)
        ).all()
        children = conn.execute(
            sa.select(runs.c.id, runs.c.workflow, runs.c.state, runs.c.stuck_reason)
            .where(
                runs.c.parent_run_id == run_id,
                sa.or_(runs.c.state.not_in(TERMINAL), runs.c.reported_to_parent.is_(False)),
                runs.c.state != "continued",
            )
            .order_by(runs.c.created_at, runs.c.id)
        ).all()
        inbox = list(
            conn.execute(
                sa.select(signals.c.name)
                .where(signals.c.run_id == run_id, signals.c.consumed_seq.is_(None))
                .order_by(signals.c.id)
            ).scalars()
        )
        hosts = list(
            conn.execute(
                sa.select(workflow_versions.c.hostname)
                .where(
                    workflow_versions.c.workflow == row.workflow,
                    workflow_versions.c.version_hash == row.version_hash,
                )
                .order_by(workflow_versions.c.hostname)
            ).scalars()
        )
    return PendingWork(run_record(row), row, list(pending_timers), list(tasks), list(children), inbox, hosts, now)


__all__ = [
    "AttemptView",
    "Lineage",
    "PendingWork",
    "RunDetail",
    "RunLink",
    "TimelineEntry",
    "attempt_view",
    "db_now",
    "open_run_ids",
    "pending_work",
    "run_detail",
]
