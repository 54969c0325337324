"""The journal's read models for operators: a run's detail, its pending work, the open runs.

Nothing here writes; each query runs in one short read transaction (on the
read-only journal the CLI opens, a connection that cannot write).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from ..errors import RunNotFound, SchemaNotMigrated
from ..events import Event
from ..serialization import loads
from ..states import TERMINAL
from .records import RunRecord
from .schema import activity_tasks, current_revision, events, runs, signals, timers, workflow_versions
from .sql_base import SQLBase, event_from_row, run_record
from .views import Lineage, PendingWork, RunDetail, RunLink, TimelineEntry, attempt_view

#: Runs whose events one query reads (the IN list's length).
HISTORY_BATCH = 500


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


class ReadsMixin(SQLBase):
    """``run_detail``, ``pending_work``, ``open_run_ids`` and ``recent_histories``."""

    def recent_histories(self, *, workflow: str | None, limit: int) -> list[tuple[RunRecord, list[Event]]]:
        """The newest ``limit`` runs (of ``workflow``, if given), each with its events in order.

        Works on any migrated revision (``replay-check`` reads copies of older deployments).

        Raises:
            SchemaNotMigrated: the database has no continuum tables. JournalUnavailable: it cannot be reached.
        """
        if current_revision(self.engine) is None:
            where = self.engine.url.render_as_string(hide_password=True)
            raise SchemaNotMigrated(f"the database {where} has no continuum tables; check the URL.", url=where)
        with self.engine.connect() as conn:
            query = sa.select(runs).order_by(runs.c.created_at.desc(), runs.c.id).limit(limit)
            if workflow:
                query = query.where(runs.c.workflow == workflow)
            records = [run_record(r) for r in conn.execute(query)]
            by_run: dict[str, list[Event]] = {r.id: [] for r in records}
            for i in range(0, len(records), HISTORY_BATCH):
                ids = [r.id for r in records[i : i + HISTORY_BATCH]]
                rows = conn.execute(
                    sa.select(events).where(events.c.run_id.in_(ids)).order_by(events.c.run_id, events.c.seq)
                )
                for row in rows:
                    by_run[row.run_id].append(event_from_row(row))
        return [(r, by_run[r.id]) for r in records]

    def run_detail(self, run_id: str, max_events: int | None = None) -> RunDetail:
        """The run, its lineage, and its history with timestamps (the last ``max_events`` when given).

        Raises:
            RunNotFound: no run has that id.
        """
        with self.engine.connect() as conn:
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


    def open_run_ids(self, limit: int) -> list[str]:
        """Ids of non-terminal runs, oldest first, at most ``limit``."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(runs.c.id)
                    .where(runs.c.state.not_in(TERMINAL))
                    .order_by(runs.c.created_at, runs.c.id)
                    .limit(limit)
                ).scalars()
            )


    def pending_work(self, run_id: str) -> PendingWork:
        """The rows that say what ``run_id`` waits on: timers, unfinished or unrecorded tasks, children, inbox.

        Raises:
            RunNotFound: no run has that id.
        """
        with self.engine.connect() as conn:
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
