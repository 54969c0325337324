"""What a claim resolves in SQL: outcomes of tasks, timers, signals and children appended to the
claimed run, a cancel journaled, and the replay log read back (from its snapshot when it has one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ..errors import (
    JournalError,
)
from ..events import Event, InboxSignal, Kind, first_signal, received
from ..serialization import loads
from ..snapshots import Snapshot
from ..snapshots import decode as decode_snapshot
from ..snapshots import due as snapshot_due
from ..snapshots import encode as encode_snapshot
from ..snapshots import extend as extend_snapshot
from .records import Dispatch
from .run_rules import (
    INBOX_BATCH,
    child_outcome,
    timed_out,
)
from .schema import (
    runs,
    signals,
    snapshots,
    timers,
)
from .sql_base import (
    Appender,
)
from .sql_tasks import TasksMixin
from .task_rules import (
    cancelled_task_outcome,
    orphaned_attempt_error,
    task_outcome,
)


class ResolveMixin(TasksMixin):
    """Resolution of a claimed run's new outcomes, and its replay log."""

    def _replay_log(self, conn: sa.Connection, run_id: str, after_seq: int, last_seq: int) -> tuple[list[Event], int]:
        """Events after ``after_seq``; from scratch, the latest snapshot plus the events after it."""
        if after_seq == 0 and last_seq >= self.snapshot_every:  # no snapshot before that many events
            snap = self._latest_snapshot(conn, run_id)
            if snap is not None:
                return [*snap.events, *self._events_after(conn, run_id, snap.upto)], snap.upto
        return self._events_after(conn, run_id, after_seq), 0

    def _latest_snapshot(self, conn: sa.Connection, run_id: str) -> Snapshot | None:
        state = conn.execute(self.sql.latest_snapshot, {"p_run": run_id}).scalar()
        return decode_snapshot(state)

    def _maybe_snapshot(self, conn: sa.Connection, run_id: str, old_seq: int, new_seq: int) -> None:
        """Refresh the run's snapshot when ``last_seq`` went past a multiple of ``snapshot_every``; keep only it."""
        if not snapshot_due(old_seq, new_seq, self.snapshot_every):
            return
        previous = self._latest_snapshot(conn, run_id)
        since = self._events_after(conn, run_id, previous.upto if previous is not None else 0)
        snap = extend_snapshot(previous, since, new_seq)
        conn.execute(snapshots.delete().where(snapshots.c.run_id == run_id))
        conn.execute(
            snapshots.insert().values(
                run_id=run_id, seq=snap.upto, state=encode_snapshot(snap), created_at=self.clock.now
            )
        )

    def _resolve(self, conn: sa.Connection, run: Any, out: Appender) -> tuple[list[Dispatch], list[InboxSignal]]:
        """Append every outcome that is now available to the claimed run; return its dispatches and inbox."""
        dispatches: list[Dispatch] = []
        # An inline attempt lives as long as the lease it ran under: this claim replaced that lease, so
        # retry the attempt now rather than after its start-to-close timeout. A row its old holder is
        # finishing this instant is locked: skipped, that finish records it.
        orphans: Sequence[Any] = ()
        if run.has_orphans:
            orphans = conn.execute(self.sql.orphaned_attempts, {"p_run": run.id, "p_token": run.lease_token}).all()
            for task in orphans:
                error = orphaned_attempt_error(task.attempt, task.owner, run.id)
                dispatches += self._fail_attempt(conn, task, error, retryable=True, wake_run=False).dispatches
        if run.cancel_requested_at is not None and not run.cancel_journaled:
            out.add(Kind.CANCEL_REQUESTED, None, None, {})
            conn.execute(runs.update().where(runs.c.id == run.id).values(cancel_journaled=True))
            dispatches += self._cancel_pending(conn, run.id, out)
        if run.has_finished or orphans:  # an orphan failed for good is finished now too, numbered after a cancel
            finished = conn.execute(self.sql.record_finished, {"p_run": run.id, "p_base": out.seq}).all()
            for task in sorted(finished, key=lambda t: t.outcome_seq):
                kind, payload = task_outcome(task.kind, task.state, loads(task.result), loads(task.error), task.attempt)
                if out.add(kind, task.command_id, task.name, payload) != task.outcome_seq:
                    raise JournalError(f"run {run.id}: task {task.id} numbered {task.outcome_seq} out of order")
        inbox = self._resolve_waits(conn, run, out) if run.has_waits else []
        children = conn.execute(self.sql.unreported_children, {"p_run": run.id}).all() if run.has_children else []
        for child in children:
            kind, payload = child_outcome(child.state, child.id, loads(child.result), loads(child.error))
            out.add(kind, child.parent_command_id, child.workflow, payload)
            conn.execute(runs.update().where(runs.c.id == child.id).values(reported_to_parent=True))
        return dispatches, inbox

    def _resolve_waits(self, conn: sa.Connection, run: Any, out: Appender) -> list[InboxSignal]:
        """Fire due timers, give each pending signal wait its signal; return the signals left in the inbox."""
        pending = conn.execute(self.sql.pending_timers, {"p_run": run.id}).all()
        inbox: list[InboxSignal] = []
        if any(t.kind == "signal" for t in pending):
            inbox = [
                InboxSignal(s.id, s.name, loads(s.payload))
                for s in conn.execute(
                    sa.select(signals.c.id, signals.c.name, signals.c.payload)
                    .where(signals.c.run_id == run.id, signals.c.consumed_seq.is_(None))
                    .order_by(signals.c.id)
                )
            ]
        for timer in pending:
            seq: int | None = None
            if timer.kind == "signal":
                match = first_signal(inbox, timer.name)
                if match is not None:
                    inbox.remove(match)
                    seq = out.add(Kind.SIGNAL_RECEIVED, timer.command_id, timer.name, received(match))
                    conn.execute(signals.update().where(signals.c.id == match.id).values(consumed_seq=seq))
                elif timer.fire_at is not None and timer.fire_at <= out.now:
                    seq = out.add(Kind.SIGNAL_TIMED_OUT, timer.command_id, timer.name, {})
            elif timer.kind == "deadline":
                if timer.fire_at is not None and timer.fire_at <= out.now:
                    kind, payload = timed_out(timer.fire_at)
                    seq = out.add(kind, None, None, payload)
            elif timer.fire_at is not None and timer.fire_at <= out.now:
                seq = out.add(Kind.TIMER_FIRED, timer.command_id, None, {"fire_at": timer.fire_at.isoformat()})
            if seq is not None:
                conn.execute(
                    timers.update()
                    .where(timers.c.run_id == run.id, timers.c.command_id == timer.command_id)
                    .values(state="fired", outcome_seq=seq)
                )
        return inbox[:INBOX_BATCH]

    def _cancel_pending(self, conn: sa.Connection, run_id: str, out: Appender | None) -> list[Dispatch]:
        """Drop a run's pending timers and unstarted tasks; ask its live children to stop.

        With ``out`` (a cancel the body is about to see) compensations are spared, since a saga
        runs them as its cleanup, and a task running now may finish (a saga waits for it) but is
        not attempted again (see ``TasksMixin._may_retry``). Without it (the run ended) every
        unstarted task goes, and attempts in flight are abandoned: nothing awaits their end.
        """
        kinds = ("activity",) if out is not None else ("activity", "compensation")
        conn.execute(self.sql.cancel_timers, {"p_run": run_id})
        if out is None:  # the run ended: attempts still in flight are abandoned, their late ends dropped
            conn.execute(self.sql.abandon_running, {"p_run": run_id})
        unstarted = conn.execute(self.sql.cancel_unstarted, {"p_run": run_id, "p_kinds": kinds}).all()
        if out is not None:
            for task in unstarted:
                kind, payload = cancelled_task_outcome(task.kind, task.attempt)
                seq = out.add(kind, task.command_id, task.name, payload)
                conn.execute(self.sql.task_outcome_seq, {"p_task": task.id, "p_seq": seq})
        return self._cancel_descendants(conn, run_id)
