"""The SQL journal: SQLAlchemy Core over psycopg 3 (PostgreSQL) or sqlite3 (embedded).

One transaction per transition. Every write to a run locks its row and checks
the caller's fencing token first; a stale token raises ``LeaseLost`` before
anything is written. Database errors are translated here and nowhere above.
Time is the database's (``now()``) on PostgreSQL, so worker clocks never decide
a lease; SQLite, a single-machine default, uses the local clock.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..errors import (
    RunNotFound,
)
from ..events import Event
from ..serialization import dumps
from ..states import RUNNABLE, TERMINAL
from .base import Journal
from .records import Dispatch, NewRun, RunRecord
from .run_rules import run_conflict
from .schema import (
    runs,
    workflow_versions,
)
from .sql_base import (
    run_record,
)
from .sql_links import LinksMixin
from .sql_reads import ReadsMixin
from .sql_steps import StepsMixin
from .sql_sweep import SweepMixin, _state_is, due_runs_where, expired_runs_where
from .sql_tasks import TasksMixin
from .version_rules import STOPPED_AT, summarise_versions


class SQLJournal(StepsMixin, SweepMixin, TasksMixin, LinksMixin, ReadsMixin, Journal):
    """The production journal.

    Args:
        url: SQLAlchemy URL (``postgresql://...`` or ``sqlite:///path``).
        activity_timeout: default start-to-close seconds of an activity attempt.
        check: refuse to start on a database that is not migrated.
        queue: default queue for dispatches that name none.
        snapshot_every: events between two snapshots of a run's replay log.
    """

    def create_run(self, run: NewRun) -> tuple[RunRecord, bool]:
        with self._tx() as conn:
            row = self._insert_run(conn, run)
            created = row is not None
            if not created:  # started before (a retried start, a redelivered message): answer with that run
                row = conn.execute(self.sql.run_by_id, {"p_run": run.id}).one()
                self._same_run(row, run)
            self._add_link(conn, run)
            return run_record(row), created

    @staticmethod
    def _same_run(row: Any, run: NewRun) -> RunRecord:
        record = run_record(row)
        if record.workflow != run.workflow or dumps(record.input) != dumps(run.input):
            raise run_conflict(run.id, record.workflow)
        return record

    def get_run(self, run_id: str) -> RunRecord:
        with self.engine.connect() as conn:
            row = conn.execute(self.sql.run_by_id, {"p_run": run_id}).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}", run_id=run_id)
        return run_record(row)

    def history(self, run_id: str, after_seq: int = 0) -> list[Event]:
        with self.engine.connect() as conn:
            return self._events_after(conn, run_id, after_seq)

    def list_runs(
        self,
        *,
        workflow: str | None = None,
        state: str | None = None,
        created_after: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        query = sa.select(runs).order_by(runs.c.created_at.desc(), runs.c.id).limit(limit).offset(offset)
        if workflow:
            query = query.where(runs.c.workflow == workflow)
        if state:
            query = query.where(runs.c.state == state)
        if created_after:
            query = query.where(runs.c.created_at >= created_after)
        with self.engine.connect() as conn:
            return [run_record(r) for r in conn.execute(query)]

    def continued_to(self, run_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(runs.c.id).where(runs.c.continued_from_run_id == run_id)).scalar()

    def upsert_versions(self, hostname: str, versions: Sequence[tuple[str, str, int, str]]) -> list[Dispatch]:
        dispatches: list[Dispatch] = []
        if not versions:
            return dispatches
        with self._tx() as conn:
            now = self.clock.now
            for workflow, version_hash, version, module in versions:
                stmt = self._insert(workflow_versions).values(
                    workflow=workflow,
                    version_hash=version_hash,
                    hostname=hostname,
                    version=version,
                    module=module,
                    first_seen_at=now,
                    last_seen_at=now,
                )
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["workflow", "version_hash", "hostname"],
                        set_={"last_seen_at": now, "version": version, "module": module},
                    )
                )
                unparked = conn.execute(
                    runs.update()
                    .where(
                        runs.c.workflow == workflow,
                        runs.c.version_hash == version_hash,
                        runs.c.stuck_reason == "unknown_version",
                        runs.c.state.not_in(TERMINAL),
                    )
                    .values(stuck_reason=None, next_wakeup_at=now, dispatched_at=now)
                    .returning(runs.c.id)
                ).scalars()
                dispatches += [Dispatch("replay", i, label=workflow, version_hash=version_hash) for i in unparked]
        return dispatches

    def park_unknown_versions(
        self, *, live_within: float, batch: int, also_live: Collection[tuple[str, str]] = ()
    ) -> list[tuple[str, str, int]]:
        with self._tx() as conn:
            now = self.clock.now
            live = workflow_versions.c.last_seen_at >= self.clock.after(-live_within)
            if conn.execute(sa.select(workflow_versions.c.hostname).where(live).limit(1)).first() is None:
                return []
            served = (
                sa.exists()
                .where(
                    workflow_versions.c.workflow == runs.c.workflow,
                    workflow_versions.c.version_hash == runs.c.version_hash,
                    live,
                )
                .correlate(runs)
            )
            due = sa.or_(sa.and_(*due_runs_where(now)), sa.and_(*expired_runs_where(now)))
            candidates = conn.execute(
                sa.select(runs.c.id, runs.c.workflow, runs.c.version_hash)
                .where(due, ~served)
                .limit(batch)
                .with_for_update(skip_locked=True)
            ).all()
            ids = [r.id for r in candidates if (r.workflow, r.version_hash) not in also_live]
            if ids:
                # An expired lease on a version nobody serves is taken back too: its holder is gone.
                conn.execute(
                    runs.update()
                    .where(runs.c.id.in_(ids))
                    .values(
                        state=sa.case((runs.c.state == "running", "suspended"), else_=runs.c.state),
                        stuck_reason="unknown_version",
                        lease_owner=None,
                        lease_expires_at=None,
                        next_wakeup_at=now,
                        dispatched_at=None,
                    )
                )
            # Parked runs keep a past next_wakeup_at, so the count reads the due-runs index range only.
            parked = conn.execute(
                sa.select(runs.c.workflow, runs.c.version_hash, sa.func.count())
                .where(
                    _state_is(runs.c.state, *RUNNABLE),
                    runs.c.next_wakeup_at <= now,
                    runs.c.stuck_reason == "unknown_version",
                )
                .group_by(runs.c.workflow, runs.c.version_hash)
                .order_by(runs.c.workflow, runs.c.version_hash)
            ).all()
        return [(r[0], r[1], int(r[2])) for r in parked]

    def retract_versions(self, hostname: str) -> None:
        with self._tx() as conn:
            conn.execute(
                workflow_versions.update()
                .where(workflow_versions.c.hostname == hostname)
                .values(last_seen_at=STOPPED_AT)
            )

    def forget_versions(self, versions: Sequence[tuple[str, str]], *, live_within: float) -> list[tuple[str, str]]:
        forgotten: list[tuple[str, str]] = []
        with self._tx() as conn:
            live = workflow_versions.c.last_seen_at >= self.clock.after(-live_within)
            for workflow, version_hash in versions:
                of_version = sa.and_(
                    workflow_versions.c.workflow == workflow, workflow_versions.c.version_hash == version_hash
                )
                # Locked first, so a worker refreshing the version meanwhile waits and then inserts its row anew.
                conn.execute(sa.select(workflow_versions.c.hostname).where(of_version).with_for_update()).all()
                alive = conn.execute(sa.select(workflow_versions.c.hostname).where(of_version, live).limit(1)).first()
                pinned = conn.execute(
                    sa.select(runs.c.id)
                    .where(
                        runs.c.workflow == workflow,
                        runs.c.version_hash == version_hash,
                        runs.c.state.not_in(TERMINAL),
                    )
                    .limit(1)
                ).first()
                if pinned is None and alive is None:
                    conn.execute(workflow_versions.delete().where(of_version))
                    forgotten.append((workflow, version_hash))
        return forgotten

    def list_versions(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(workflow_versions).order_by(workflow_versions.c.workflow, workflow_versions.c.version)
            ).all()
            pinned = dict(
                ((r.workflow, r.version_hash), r.n)
                for r in conn.execute(
                    sa.select(runs.c.workflow, runs.c.version_hash, sa.func.count().label("n"))
                    .where(runs.c.state.not_in(TERMINAL))
                    .group_by(runs.c.workflow, runs.c.version_hash)
                )
            )
        return summarise_versions([r._mapping for r in rows], pinned)
