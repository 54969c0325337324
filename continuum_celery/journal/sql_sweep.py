"""The beat sweep in SQL: re-derive every due dispatch from the journal.

Bounded queries, each claimed with ``FOR UPDATE SKIP LOCKED`` so sweeps
running at once (two beats, a slow sweep overlapping the next) split the work
instead of sending it twice: runs that are due (a timer, new input, a lost
dispatch), runs whose lease expired, activity tasks that are due (first
attempts never sent or lost, retries past ``retry_at``), and activity attempts
whose lease expired.

Each query reads one partial index and only the rows that are due, however
many idle runs the table holds. The state values are inlined as SQL literals,
not bound parameters: a prepared statement planned generically (psycopg
prepares a statement after a few executions) can then still prove the
partial index's predicate.

A row already dispatched is sent again only once its message looks lost: after
``redispatch_after`` seconds, then after as long as the row had already waited
when it was last sent (up to :data:`REDISPATCH_BACKOFF_CAP` times
``redispatch_after``). Under a backlog deeper than ``redispatch_after`` a row
is thus re-sent a few times, not on every sweep. (SQLite, the single-machine
default, re-sends every ``redispatch_after``.)
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from ..states import RUNNABLE
from .records import Dispatch
from .run_rules import REDISPATCH_BACKOFF_CAP
from .schema import activity_tasks, runs
from .sql_tasks import TasksMixin
from .task_rules import expired_attempt_error

#: Due rows counted at most per kind for the ``due_backlog`` figure, so counting stays bounded.
BACKLOG_COUNT_LIMIT = 10_000


def _state_is(column: Any, *states: str) -> Any:
    """``column IN ('a', 'b')`` with the values inlined (see the module docstring)."""
    values = [sa.literal(s, literal_execute=True) for s in states]
    return column == values[0] if len(values) == 1 else column.in_(values)


def due_runs_where(now: Any) -> list[Any]:
    """Runs a worker may claim now: runnable, not parked, wake-up time reached (index ``continuum_runs_due``)."""
    return [_state_is(runs.c.state, *RUNNABLE), runs.c.stuck_reason.is_(None), runs.c.next_wakeup_at <= now]


def expired_runs_where(now: Any) -> list[Any]:
    """Runs whose holder stopped renewing its lease (index ``continuum_runs_leased``)."""
    return [_state_is(runs.c.state, "running"), runs.c.lease_expires_at < now]


def new_tasks_where() -> list[Any]:
    """Activity tasks waiting for their first attempt (index ``continuum_activity_tasks_due``, ``IS NULL``)."""
    return [_state_is(activity_tasks.c.state, "scheduled"), activity_tasks.c.retry_at.is_(None)]


def retry_tasks_where(now: Any) -> list[Any]:
    """Activity tasks whose retry back-off has passed (index ``continuum_activity_tasks_due``).

    Kept apart from :func:`new_tasks_where`: ``retry_at IS NULL OR retry_at <= now`` is not one
    index range, and would read every task still waiting out its back-off.
    """
    return [_state_is(activity_tasks.c.state, "scheduled"), activity_tasks.c.retry_at <= now]


def expired_tasks_where(now: Any) -> list[Any]:
    """Activity attempts whose worker died or overran (index ``continuum_activity_tasks_leased``)."""
    return [_state_is(activity_tasks.c.state, "running"), activity_tasks.c.lease_expires_at < now]


def _claiming(query: sa.Select[Any], order: Any, batch: int) -> sa.Select[Any]:
    return query.order_by(order).limit(batch).with_for_update(skip_locked=True)


class SweepMixin(TasksMixin):
    """``sweep`` and ``due_backlog``."""

    def sweep_queries(self, batch: int, redispatch_after: float) -> dict[str, sa.Select[Any]]:
        """The sweep's claiming queries, by name (also what the EXPLAIN tests plan)."""
        now = self.clock.now
        run = sa.select(runs.c.id, runs.c.workflow, runs.c.version_hash)
        task = sa.select(activity_tasks.c.id, activity_tasks.c.attempt, activity_tasks.c.queue, activity_tasks.c.name)
        task_due = sa.func.coalesce(activity_tasks.c.retry_at, activity_tasks.c.created_at)
        return {
            "due_runs": _claiming(
                run.where(*due_runs_where(now), self._unsent(runs, runs.c.next_wakeup_at, redispatch_after)),
                runs.c.next_wakeup_at,
                batch,
            ),
            "expired_runs": _claiming(
                run.where(*expired_runs_where(now), self._unsent(runs, runs.c.lease_expires_at, redispatch_after)),
                runs.c.lease_expires_at,
                batch,
            ),
            "new_tasks": _claiming(
                task.where(*new_tasks_where(), self._unsent(activity_tasks, task_due, redispatch_after)),
                activity_tasks.c.created_at,
                batch,
            ),
            "retry_tasks": _claiming(
                task.where(*retry_tasks_where(now), self._unsent(activity_tasks, task_due, redispatch_after)),
                activity_tasks.c.retry_at,
                batch,
            ),
            "expired_tasks": _claiming(
                sa.select(activity_tasks).where(*expired_tasks_where(now)), activity_tasks.c.lease_expires_at, batch
            ),
        }

    def _unsent(self, table: sa.Table, due: Any, redispatch_after: float) -> Any:
        """Never dispatched, or dispatched so long ago that the message looks lost (see the module docstring)."""
        dispatched = table.c.dispatched_at
        if self.is_sqlite:
            return sa.or_(dispatched.is_(None), dispatched < self.clock.after(-redispatch_after))
        least = sa.literal(timedelta(seconds=redispatch_after), sa.Interval())
        most = sa.literal(timedelta(seconds=redispatch_after * REDISPATCH_BACKOFF_CAP), sa.Interval())
        # How long the row had waited when last sent; LEAST and GREATEST skip a NULL.
        waited = sa.type_coerce(dispatched, sa.DateTime(timezone=True)) - due
        wait = sa.func.greatest(least, sa.func.least(waited, most), type_=sa.Interval())
        return sa.or_(dispatched.is_(None), dispatched < self.clock.now - wait)

    def sweep(self, *, batch: int, redispatch_after: float) -> list[Dispatch]:
        queries = self.sweep_queries(batch, redispatch_after)
        dispatches: list[Dispatch] = []
        with self._tx() as conn:
            for name in ("due_runs", "expired_runs"):
                rows = conn.execute(queries[name]).all()
                if rows:
                    conn.execute(
                        runs.update().where(runs.c.id.in_([r.id for r in rows])).values(dispatched_at=self.clock.now)
                    )
                dispatches += [Dispatch("replay", r.id, label=r.workflow, version_hash=r.version_hash) for r in rows]
            tasks = [*conn.execute(queries["new_tasks"]), *conn.execute(queries["retry_tasks"])]
            if tasks:
                conn.execute(
                    activity_tasks.update()
                    .where(activity_tasks.c.id.in_([t.id for t in tasks]))
                    .values(dispatched_at=self.clock.now)
                )
            dispatches += [Dispatch("activity", t.id, queue=t.queue, attempt=t.attempt, label=t.name) for t in tasks]
            now = datetime.now(timezone.utc)
            for task in conn.execute(queries["expired_tasks"]).all():
                error = expired_attempt_error(
                    task.attempt, task.timeout, task.heartbeat_timeout, task.started_at, task.owner, now
                )
                dispatches += self._fail_attempt(conn, task, error, retryable=True).dispatches
        return dispatches

    def due_backlog(self) -> int:
        """Due work no worker has started yet: due runs, expired leases, due and expired activity tasks.

        Counts what is waiting, dispatched or not (a dispatched run is still due until a worker
        claims it), each kind up to :data:`BACKLOG_COUNT_LIMIT`.
        """
        now = self.clock.now
        counts = [
            sa.select(sa.func.count())
            .select_from(sa.select(sa.literal(1)).where(*where).limit(BACKLOG_COUNT_LIMIT).subquery())
            .scalar_subquery()
            for where in (
                due_runs_where(now),
                expired_runs_where(now),
                new_tasks_where(),
                retry_tasks_where(now),
                expired_tasks_where(now),
            )
        ]
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sum(counts[1:], counts[0]))).scalar() or 0)
