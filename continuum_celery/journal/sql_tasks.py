"""Activity attempts and outside input in SQL: claim and finish attempts; signals, cancel, retry."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from ..errors import (
    InvalidArgument,
)
from ..events import Kind
from ..serialization import dumps, loads
from ..states import TERMINAL
from .records import ActivityClaim, ActivityOutcome, Dispatch
from .run_rules import DEADLINE_COMMAND
from .schema import (
    activity_results,
    activity_tasks,
    events,
    runs,
    signals,
    timers,
)
from .sql_base import SQLBase, woken_run
from .task_rules import (
    attempt_liveness,
    close_in,
    heartbeat_lease,
    may_retry_within,
    retry_delay,
    schedule_to_close_error,
)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class TasksMixin(SQLBase):
    """Activity task rows and the run inbox."""

    def claim_activity(self, task_id: str, attempt: int, owner: str) -> ActivityClaim | None:
        with self._single() as conn:
            return self._claim_task(conn, task_id, attempt, owner)

    def finish_activity(
        self,
        claim: ActivityClaim,
        *,
        result: Any = None,
        error: dict[str, Any] | None = None,
        retryable: bool = True,
    ) -> ActivityOutcome:
        text = dumps(result)
        params = {"p_task": claim.task_id, "p_attempt": claim.attempt, "p_result": text, "p_seq": None}
        if error is None and self.sql.complete_and_poke is not None and not claim.idempotency_key:
            with self._single() as conn:  # one round trip
                row = conn.execute(self.sql.complete_and_poke, params).first()
            if row is None:
                return ActivityOutcome("stale")
            woke = woken_run(row, claim.run_id)
            return ActivityOutcome("completed", [woke] if woke else [])
        with self._tx() as conn:
            if error is None:
                if not conn.execute(self.sql.complete_attempt, params).rowcount:
                    return ActivityOutcome("stale")
                self._store_result(conn, claim, text)
                poke = self._poke(conn, claim.run_id)
                return ActivityOutcome("completed", [poke] if poke else [])
            row = conn.execute(
                sa.select(activity_tasks)
                .where(
                    activity_tasks.c.id == claim.task_id,
                    activity_tasks.c.attempt == claim.attempt,
                    activity_tasks.c.state == "running",
                )
                .with_for_update()
            ).first()
            if row is None:
                return ActivityOutcome("stale")
            return self._fail_attempt(conn, row, error, retryable)

    def heartbeat(self, task_id: str, attempt: int, details: Any = None, *, record: bool = True) -> str:
        with self._tx() as conn:
            mine = (activity_tasks.c.id == task_id, activity_tasks.c.attempt == attempt)
            if record:
                values: dict[str, Any] = {"heartbeat_at": self.clock.now}
                if details is not None:
                    values["heartbeat_details"] = dumps(details)
                row = conn.execute(
                    activity_tasks.update()
                    .where(*mine, activity_tasks.c.state == "running")
                    .values(**values)
                    .returning(*activity_tasks.c)
                ).first()
                if row is not None and row.heartbeat_timeout:
                    lease = heartbeat_lease(row.started_at, row.timeout, row.heartbeat_timeout, _utcnow())
                    conn.execute(self.sql.heartbeat_lease, {"p_task": task_id, "p_lease": lease})
            else:
                row = conn.execute(sa.select(activity_tasks).where(*mine, activity_tasks.c.state == "running")).first()
            if row is None:
                return attempt_liveness(False, False)
            return attempt_liveness(True, self._may_retry(conn, row) and not self._past_deadline(conn, row.run_id))

    def _past_deadline(self, conn: sa.Connection, run_id: str) -> bool:
        """Whether the run's workflow timeout is due and its body has not seen it yet (work it started stops)."""
        due = conn.execute(
            sa.select(timers.c.run_id).where(
                timers.c.run_id == run_id,
                timers.c.command_id == DEADLINE_COMMAND,
                timers.c.state == "pending",
                timers.c.fire_at <= self.clock.now,
            )
        ).first()
        return due is not None

    def detach_inline(self, claim: ActivityClaim) -> None:
        with self._tx() as conn:
            conn.execute(
                activity_tasks.update()
                .where(
                    activity_tasks.c.id == claim.task_id,
                    activity_tasks.c.attempt == claim.attempt,
                    activity_tasks.c.state == "running",
                )
                .values(run_lease_token=None, updated_at=self.clock.now)
            )

    def _store_result(self, conn: sa.Connection, claim: ActivityClaim, result: str) -> None:
        """Keep a completed attempt's result (JSON text) under its idempotency key; the first one stays."""
        if claim.idempotency_key:
            conn.execute(
                self._insert(activity_results)
                .values(
                    idempotency_key=claim.idempotency_key,
                    activity=claim.name,
                    result=result,
                    run_id=claim.run_id,
                    created_at=self.clock.now,
                )
                .on_conflict_do_nothing()
            )

    def _fail_attempt(
        self, conn: sa.Connection, row: Any, error: dict[str, Any], retryable: bool, *, wake_run: bool = True
    ) -> ActivityOutcome:
        """Retry the attempt by its policy, or fail the task and wake its run (unless the caller holds it)."""
        policy = loads(row.retry_policy)
        delay = retry_delay(policy, row.attempt)
        retry = retryable and row.attempt < row.max_attempts and self._may_retry(conn, row)
        if retry and not may_retry_within(close_in(row.created_at, row.schedule_to_close, _utcnow()), delay):
            retry, error = False, schedule_to_close_error(row.attempt, row.schedule_to_close, error)
        if retry:
            due = conn.execute(
                activity_tasks.update()
                .where(activity_tasks.c.id == row.id)
                .values(
                    state="scheduled",
                    attempt=row.attempt + 1,
                    retry_at=self.clock.after(delay),
                    error=dumps(error),
                    lease_expires_at=None,
                    dispatched_at=self.clock.now,
                    updated_at=self.clock.now,
                )
                .returning(activity_tasks.c.retry_at)
            ).scalar()
            return ActivityOutcome(
                "retry",
                [
                    Dispatch(
                        "activity",
                        row.id,
                        queue=row.queue,
                        attempt=row.attempt + 1,
                        label=row.name,
                        due=due,
                    )
                ],
            )
        conn.execute(
            activity_tasks.update()
            .where(activity_tasks.c.id == row.id)
            .values(
                state="failed",
                error=dumps(error),
                lease_expires_at=None,
                finished_at=self.clock.now,
                updated_at=self.clock.now,
            )
        )
        poke = self._poke(conn, row.run_id) if wake_run else None
        return ActivityOutcome("failed", [poke] if poke else [])

    def _may_retry(self, conn: sa.Connection, task: Any) -> bool:
        """Whether a failed attempt may run again: not once its run has ended, nor an activity a cancel overtook.

        Activities scheduled after the run saw its cancel (cleanup in a body that caught
        ``RunCancelled``) keep their retries; compensations keep theirs until the run ends.
        """
        run = conn.execute(
            sa.select(runs.c.state, runs.c.cancel_requested_at, runs.c.cancel_journaled).where(runs.c.id == task.run_id)
        ).first()
        if run is None or run.state in TERMINAL:
            return False
        if task.kind != "activity" or run.cancel_requested_at is None:
            return True
        if not run.cancel_journaled:
            return False
        seqs: dict[str, int] = dict(
            conn.execute(
                sa.select(events.c.kind, events.c.seq).where(
                    events.c.run_id == task.run_id,
                    sa.or_(
                        events.c.kind == Kind.CANCEL_REQUESTED.value,
                        sa.and_(events.c.kind == Kind.ACTIVITY_SCHEDULED.value, events.c.command_id == task.command_id),
                    ),
                )
            ).all()
        )
        return seqs.get(Kind.ACTIVITY_SCHEDULED.value, 0) > seqs.get(Kind.CANCEL_REQUESTED.value, 0)

    def send_signal(self, run_id: str, name: str, payload: Any) -> list[Dispatch]:
        with self._tx() as conn:
            self._open_run(conn, run_id, f"receive signal {name!r}")
            conn.execute(
                signals.insert().values(run_id=run_id, name=name, payload=dumps(payload), created_at=self.clock.now)
            )
            poke = self._poke(conn, run_id)
            return [poke] if poke else []

    def request_cancel(self, run_id: str) -> list[Dispatch]:
        with self._tx() as conn:
            # A run that continued as new lives on in its successor: cancel that one.
            while (nxt := self._successor(conn, run_id)) is not None:
                run_id = nxt
            row = conn.execute(sa.select(runs.c.state, runs.c.cancel_requested_at).where(runs.c.id == run_id)).first()
            if row is not None and row.state == "cancelled":
                return []
            row = self._open_run(conn, run_id, "be cancelled")
            if row.cancel_requested_at is not None:
                return []
            conn.execute(runs.update().where(runs.c.id == run_id).values(cancel_requested_at=self.clock.now))
            poke = self._poke(conn, run_id)
            return ([poke] if poke else []) + self._cancel_descendants(conn, run_id)

    def _successor(self, conn: sa.Connection, run_id: str) -> str | None:
        found = conn.execute(sa.select(runs.c.id).where(runs.c.continued_from_run_id == run_id)).scalar()
        return str(found) if found is not None else None

    def request_retry(self, run_id: str, who: str) -> list[Dispatch]:
        with self._tx() as conn:
            row = self._open_run(conn, run_id, "be retried")
            if row.state == "running":
                raise InvalidArgument(
                    f"run {run_id} is running now (lease held by {row.lease_owner}); nothing to retry."
                )
            # Attempts waiting out a retry back-off run now: the operator says the cause is fixed.
            hurried = conn.execute(
                activity_tasks.update()
                .where(
                    activity_tasks.c.run_id == run_id,
                    activity_tasks.c.state == "scheduled",
                    activity_tasks.c.retry_at > self.clock.now,
                )
                .values(retry_at=self.clock.now, dispatched_at=self.clock.now, updated_at=self.clock.now)
                .returning(activity_tasks.c.id, activity_tasks.c.attempt, activity_tasks.c.queue, activity_tasks.c.name)
            ).all()
            conn.execute(
                events.insert().values(
                    run_id=run_id,
                    seq=row.last_seq + 1,
                    kind=Kind.RETRY_REQUESTED.value,
                    payload=dumps(
                        {
                            "by": who,
                            "stuck_reason": row.stuck_reason,
                            "activities": [{"activity": t.name, "attempt": t.attempt} for t in hurried],
                        }
                    ),
                    created_at=self.clock.now,
                )
            )
            conn.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(
                    last_seq=row.last_seq + 1,
                    stuck_reason=None,
                    next_wakeup_at=self.clock.now,
                    dispatched_at=self.clock.now,
                )
            )
            return [Dispatch("replay", run_id, label=row.workflow, version_hash=row.version_hash)] + [
                Dispatch("activity", t.id, queue=t.queue, attempt=t.attempt, label=t.name) for t in hurried
            ]
