"""Run steps in SQL: claim a run (``sql_resolve`` resolves its outcomes), commit a decision, renew and
release leases."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ..errors import (
    JournalError,
    RunConflict,
)
from ..events import InboxSignal, Kind, NewEvent
from ..replay import ContinueAsNew, Outcome
from ..serialization import dumps, loads
from .records import CompletedAttempt, Dispatch, Inline, Lease, NewRun, StepResult, StepStart
from .run_rules import (
    child_run,
    continued_run,
    ending,
    inline_attempt_lost,
    renewal_refused,
    wait_deadline,
)
from .schema import (
    runs,
    signals,
)
from .sql_base import (
    Appender,
    run_record,
)
from .sql_resolve import ResolveMixin
from .task_rules import (
    SCHEDULE_KINDS,
    TaskSpec,
    claim_of,
    task_id,
    task_outcome,
    task_spec,
)


def _waits_or_reuses(cmd: NewEvent) -> bool:
    """Whether a command can make a run due in the step that journals it: a wait (its timer, or a signal
    already there), or an activity whose idempotency key may find a stored result."""
    if cmd.kind in (Kind.TIMER_SCHEDULED, Kind.SIGNAL_WAIT, Kind.SIGNAL_RECEIVED):
        return True
    return cmd.kind in SCHEDULE_KINDS and bool(cmd.payload.get("idempotency_key"))


class _Declined(Exception):
    """Raised inside a commit to roll it back when a folded attempt must be recorded on its own."""

    def __init__(self, last_seq: int) -> None:
        super().__init__(last_seq)
        self.last_seq = last_seq


class StepsMixin(ResolveMixin):
    """begin_step / commit_step and the lease operations."""

    def begin_step(self, run_id: str, owner: str, ttl: float, after_seq: int) -> StepStart | None:
        with self._tx() as conn:
            row = conn.execute(self.sql.claim_run, {"p_run": run_id, "p_owner": owner, "p_ttl": ttl}).first()
            if row is None:
                return None
            appender = Appender(run_id, row.last_seq, row.db_now)
            dispatches: list[Dispatch] = []
            inbox: list[InboxSignal] = []
            # A run that has journaled no command yet (only run_started) has nothing to resolve but a cancel.
            if row.last_seq > 1 or row.cancel_requested_at is not None:
                dispatches, inbox = self._resolve(conn, row, appender)
                appender.flush(conn, self)
                self._maybe_snapshot(conn, run_id, row.last_seq, appender.seq)
            lease = Lease(run_id=run_id, token=row.lease_token, owner=owner)
            record = run_record(row)
            if after_seq and after_seq == row.last_seq:  # the caller has the rest: only this claim's events are new
                loaded, snapshot_seq = list(appender.added), 0
            else:
                loaded, snapshot_seq = self._replay_log(conn, run_id, after_seq, appender.seq)
            return StepStart(
                lease=lease,
                run=record,
                events=loaded,
                now=row.db_now,
                wake_seq=row.wake_seq,
                dispatches=dispatches,
                snapshot_seq=snapshot_seq,
                inbox=inbox,
            )

    def commit_step(
        self,
        lease: Lease,
        commands: Sequence[NewEvent],
        outcome: Outcome | None,
        *,
        wake_seq: int,
        child_versions: dict[str, tuple[str, int]],
        continue_version: tuple[str, int] | None = None,
        inline: Inline | None = None,
        completed: CompletedAttempt | None = None,
    ) -> StepResult:
        try:
            with self._tx() as conn:
                return self._commit(
                    conn, lease, commands, outcome, wake_seq, child_versions, continue_version, inline, completed
                )
        except _Declined as declined:
            return StepResult(last_seq=declined.last_seq, declined=True)

    def _commit(
        self,
        conn: sa.Connection,
        lease: Lease,
        commands: Sequence[NewEvent],
        outcome: Outcome | None,
        wake_seq: int,
        child_versions: dict[str, tuple[str, int]],
        continue_version: tuple[str, int] | None,
        inline: Inline | None,
        completed: CompletedAttempt | None,
    ) -> StepResult:
        """``commit_step`` inside the caller's transaction; raises ``_Declined`` to roll it back."""
        inline_claim = None
        if outcome is not None:
            self._lock_parent_first(conn, lease.run_id)
        appended = len(commands) + (completed is not None) + (outcome is not None)
        params = {"p_run": lease.run_id, "p_token": lease.token, "p_appended": appended, "p_seen": wake_seq}
        suspends = outcome is None and inline is None and completed is None and not any(map(_waits_or_reuses, commands))
        row = conn.execute(self.sql.take_and_suspend if suspends else self.sql.take_run, params).first()
        if row is None:
            raise self._lease_lost(conn, lease)
        last_seq = row.last_seq - appended
        if completed is not None and row.wake_seq != wake_seq:
            raise _Declined(last_seq)  # rolls the transaction back: nothing is written
        out = Appender(lease.run_id, last_seq, None)
        if completed is not None:
            self._record_inline_success(conn, lease, completed, out)
        dispatches: list[Dispatch] = []
        immediate = False
        waits: dict[int, dict[str, Any]] = {}
        consumed: list[dict[str, Any]] = []
        for cmd in commands:
            seq = out.add(cmd.kind, cmd.command_id, cmd.name, dict(cmd.payload))
            assert cmd.command_id is not None
            if cmd.kind in SCHEDULE_KINDS:
                # A cancel not yet journaled holds new work back: that activity goes the Celery way.
                here = inline is not None and cmd.command_id == inline.command_id and not row.cancel_requested_at
                spec, tid, stored = self._schedule_task(conn, lease.run_id, cmd, lease if here else None)
                if stored:
                    immediate = True
                elif here:
                    inline_claim = claim_of(spec, tid, lease.run_id, cmd, row.workflow, loads(row.trace_context))
                else:
                    dispatches.append(Dispatch("activity", tid, queue=spec.queue, attempt=1, label=cmd.name or ""))
            elif cmd.kind in (Kind.TIMER_SCHEDULED, Kind.SIGNAL_WAIT):
                waits[cmd.command_id] = {
                    "run_id": lease.run_id,
                    "command_id": cmd.command_id,
                    "kind": "sleep" if cmd.kind is Kind.TIMER_SCHEDULED else "signal",
                    "name": cmd.name,
                    "fire_at": wait_deadline(cmd),
                    "state": "pending",
                    "outcome_seq": None,
                }
            elif cmd.kind is Kind.SIGNAL_RECEIVED:  # the wait just before took a signal of the step's inbox
                waits[cmd.command_id].update(state="fired", outcome_seq=seq)
                consumed.append({"p_signal": cmd.payload["signal_id"], "p_seq": seq})
            elif cmd.kind is Kind.CHILD_STARTED:
                child = child_run(cmd, lease.run_id, row.correlation_id, child_versions)
                self._start_child(conn, child)
                dispatches.append(Dispatch("replay", child.id, label=child.workflow, version_hash=child.version_hash))
        immediate = self._store_waits(conn, lease.run_id, waits, consumed) or immediate
        result = StepResult(last_seq=out.seq)
        if outcome is None and inline is not None and inline_claim is not None:
            result.lease_kept = not immediate and row.wake_seq == wake_seq
        values: dict[str, Any] = {}
        if outcome is None and not result.lease_kept:
            result.runnable_again = immediate or row.wake_seq != wake_seq
        elif outcome is not None:
            values, extra = self._finish(conn, row, out, outcome, continue_version)
            dispatches += extra
            result.finished_state = values["state"]
            result.continued_run_id = values.pop("_continued", None)
        if out.seq != row.last_seq:
            raise JournalError(f"run {lease.run_id}: commit appended up to {out.seq}, expected {row.last_seq}")
        out.flush(conn, self, set_last_seq=False)  # take_run set last_seq
        if outcome is None:
            self._maybe_snapshot(conn, lease.run_id, last_seq, out.seq)
        else:
            conn.execute(self.sql.drop_snapshots, {"p_run": lease.run_id})
        result.now = row.db_now
        if suspends:  # the run row is written already
            result.next_wakeup_at = None if result.runnable_again else row.next_wakeup_at
        elif not result.lease_kept:
            written = conn.execute(*self._end_step(lease, result, out.seq, values)).one()
            if outcome is None and not result.runnable_again:
                result.next_wakeup_at = written.next_wakeup_at
        result.last_seq = out.seq
        result.dispatches = dispatches
        result.inline_claim = inline_claim
        return result

    def _end_step(
        self, lease: Lease, result: StepResult, seq: int, finish: dict[str, Any]
    ) -> tuple[Any, dict[str, Any]]:
        """The run row's update that closes a step that gives the lease back: suspend, or end (``finish``)."""
        params: dict[str, Any] = {"p_run": lease.run_id, "p_seq": seq}
        if result.finished_state is None:
            return (self.sql.suspend_runnable if result.runnable_again else self.sql.suspend_until_timer), params
        now = self.clock.now
        statement = (
            runs.update()
            .where(runs.c.id == lease.run_id)
            .values(last_seq=seq, dispatched_at=None, updated_at=now, lease_owner=None, lease_expires_at=None, **finish)
            .returning(now.label("db_now"), runs.c.next_wakeup_at)
        )
        return statement, {}

    def _record_inline_success(self, conn: sa.Connection, lease: Lease, done: CompletedAttempt, out: Appender) -> None:
        """Complete an inline attempt and append its outcome, in the decision's transaction."""
        claim = done.claim
        kind, payload = task_outcome(claim.kind, "completed", done.result, None, claim.attempt)
        seq = out.add(kind, done.command_id, claim.name, payload)
        result = dumps(done.result)
        updated = conn.execute(
            self.sql.complete_attempt,
            {"p_task": claim.task_id, "p_attempt": claim.attempt, "p_result": result, "p_seq": seq},
        ).rowcount
        if not updated:  # the sweep took the attempt back (it overran its timeout): this decision is void
            raise inline_attempt_lost(lease, claim)
        self._store_result(conn, claim, result)

    def _store_waits(
        self, conn: sa.Connection, run_id: str, waits: dict[int, dict[str, Any]], consumed: list[dict[str, Any]]
    ) -> bool:
        """Insert a step's timer rows, mark the signals its waits took; True if a pending wait has one waiting."""
        if waits:
            conn.execute(self.sql.insert_timers, list(waits.values()))
        if consumed:
            # Only a lease holder consumes signals, and take_run has just proved this step holds the run.
            conn.execute(self.sql.consume_signal, consumed)
        return any(
            w["kind"] == "signal" and w["state"] == "pending" and self._has_signal(conn, run_id, w["name"] or "")
            for w in waits.values()
        )

    def _has_signal(self, conn: sa.Connection, run_id: str, name: str) -> bool:
        found = conn.execute(
            sa.select(signals.c.id)
            .where(signals.c.run_id == run_id, signals.c.name == name, signals.c.consumed_seq.is_(None))
            .limit(1)
        ).first()
        return found is not None

    def _schedule_task(
        self, conn: sa.Connection, run_id: str, cmd: NewEvent, held_by: Lease | None = None
    ) -> tuple[TaskSpec, str, bool]:
        """Insert the task row: scheduled, already running under ``held_by`` (an inline attempt), or completed
        from an idempotency key's stored result. Returns (spec, task id, whether the result was stored)."""
        spec = task_spec(cmd, self.activity_timeout)
        tid = task_id(run_id, cmd.command_id or 0)
        key = spec.idempotency_key
        stored = None
        if key:
            stored = conn.execute(self.sql.stored_result, {"p_key": key}).scalar()
        state = "completed" if stored is not None else "scheduled" if held_by is None else "running"
        row = {
            "id": tid,
            "run_id": run_id,
            "command_id": cmd.command_id,
            "kind": spec.kind,
            "name": cmd.name,
            "arguments": dumps(spec.arguments),
            "queue": spec.queue,
            "state": state,
            "attempt": 1,
            "max_attempts": spec.max_attempts,
            "retry_policy": dumps(spec.retry_policy),
            "timeout": spec.timeout,
            "idempotency_key": key,
            "result": stored,
            "heartbeat_timeout": spec.heartbeat_timeout,
            "schedule_to_close": spec.schedule_to_close,
        }
        if held_by is not None and state == "running":
            limits = {"p_timeout": spec.timeout, "p_heartbeat": spec.heartbeat_timeout}
            inline = {"owner": held_by.owner, "run_lease_token": held_by.token, "p_close": spec.schedule_to_close}
            inline.update(limits)
            conn.execute(self.sql.insert_running_task, {**row, **inline})
        elif state == "scheduled":
            conn.execute(self.sql.insert_task, row)
        else:
            conn.execute(self.sql.insert_task.values(finished_at=self.clock.now), row)
        return spec, tid, stored is not None

    def _start_child(self, conn: sa.Connection, child: NewRun) -> None:
        if self._insert_run(conn, child) is not None:
            return
        existing = conn.execute(self.sql.run_by_id, {"p_run": child.id}).one()
        if existing.parent_run_id != child.parent_run_id:
            raise RunConflict(f"child run id {child.id!r} is already used by another run", run_id=child.id)

    def _finish(
        self,
        conn: sa.Connection,
        row: Any,
        out: Appender,
        outcome: Outcome,
        continue_version: tuple[str, int] | None,
    ) -> tuple[dict[str, Any], list[Dispatch]]:
        dispatches: list[Dispatch] = []
        end = ending(row.id, outcome)
        out.add(end.kind, None, None, end.payload)
        values: dict[str, Any] = {"next_wakeup_at": None, "state": end.state}
        values.update({name: dumps(value) for name, value in end.fields.items()})
        if end.next_run_id is not None:
            assert isinstance(outcome, ContinueAsNew) and continue_version is not None
            next_id = values["_continued"] = end.next_run_id
            successor = continued_run(row, loads(row.trace_context) or {}, outcome, continue_version)
            if self._insert_run(conn, successor) is None:
                raise JournalError(f"run {row.id} cannot continue as {next_id}: a run with that id exists")
            dispatches.append(Dispatch("replay", next_id, label=row.workflow, version_hash=continue_version[0]))
            if row.cancel_requested_at is not None:
                # A cancel that reached this run after its body decided to continue stops the next run.
                conn.execute(
                    runs.update().where(runs.c.id == next_id).values(cancel_requested_at=row.cancel_requested_at)
                )
        dispatches += self._cancel_pending(conn, row.id, None)
        if row.parent_run_id and values["state"] != "continued":
            parent = self._poke(conn, row.parent_run_id)
            if parent:
                dispatches.append(parent)
        return values, dispatches

    def _lock_parent_first(self, conn: sa.Connection, run_id: str) -> None:
        """Lock a finishing run's parent before the run itself.

        Writes that span a parent and its children (cancelling a tree, a parent resolving its
        children) lock the parent first; a child that pokes its parent as it ends must take the
        locks in that same order, or the two transactions can deadlock.
        """
        parent_id = conn.execute(self.sql.parent_of, {"p_run": run_id}).scalar()
        if parent_id is not None:
            conn.execute(self.sql.lock_parent, {"p_parent": parent_id})

    def renew(self, lease: Lease, ttl: float) -> None:
        with self._tx() as conn:
            done = conn.execute(
                runs.update()
                .where(
                    runs.c.id == lease.run_id,
                    runs.c.lease_token == lease.token,
                    runs.c.state == "running",
                )
                .values(lease_expires_at=self.clock.after(ttl))
            ).rowcount
        if not done:
            raise renewal_refused(lease)

    def release(self, lease: Lease, stuck_reason: str | None = None) -> None:
        with self._tx() as conn:
            self._locked_run(conn, lease)
            values: dict[str, Any] = {
                "state": "suspended",
                "lease_owner": None,
                "lease_expires_at": None,
                "stuck_reason": stuck_reason,
            }
            if stuck_reason is None:
                values["next_wakeup_at"] = self.clock.now
            conn.execute(runs.update().where(runs.c.id == lease.run_id).values(**values))
