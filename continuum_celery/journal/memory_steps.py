"""Run steps in memory: claim and resolve outcomes, commit a decision, renew and release (twin of ``sql_steps``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from ..errors import JournalError, RunConflict
from ..events import Kind, NewEvent
from ..replay import ContinueAsNew, Outcome
from ..serialization import roundtrip
from .base import CompletedAttempt, Dispatch, Inline, Lease, StepResult, StepStart
from .memory_tables import MemoryTables, RunRow, TaskRow, TimerRow, attempt_of, claimable, replay_of
from .rules import (
    CHILD_OUTCOMES,
    SCHEDULE_KINDS,
    child_outcome,
    child_run,
    continued_run,
    ending,
    inline_attempt_lost,
    orphaned_attempt_error,
    renewal_refused,
    task_id,
    task_outcome,
    task_spec,
    wait_deadline,
)


class MemorySteps(MemoryTables):
    """begin_step / commit_step and the lease operations."""

    # ---- steps -------------------------------------------------------------------------
    def begin_step(self, run_id: str, owner: str, ttl: float, after_seq: int) -> StepStart | None:
        with self._lock:
            now = self.clock()
            run = self._runs.get(run_id)
            if run is None or not claimable(run, now):
                return None
            run.state, run.lease_owner, run.dispatched_at, run.updated_at = "running", owner, None, now
            run.lease_token += 1
            run.lease_expires_at = now + timedelta(seconds=ttl)
            record = run.record()
            dispatches = self._resolve(run, now)
            self._maybe_snapshot(run, record.last_seq)
            events, snapshot_seq = self._replay_log(run_id, after_seq)
            return StepStart(
                lease=Lease(run_id=run_id, token=run.lease_token, owner=owner),
                run=record,
                events=events,
                now=now,
                wake_seq=run.wake_seq,
                dispatches=dispatches,
                snapshot_seq=snapshot_seq,
            )

    def _resolve(self, run: RunRow, now: datetime) -> list[Dispatch]:
        """Append every outcome now available to the claimed run, in the SQL journal's order."""
        dispatches: list[Dispatch] = []
        orphaned = [
            t
            for t in self._tasks.values()
            if t.run_id == run.id
            and t.state == "running"
            and t.run_lease_token is not None
            and t.run_lease_token < run.lease_token
        ]
        for task in orphaned:  # inline attempts of a lease this claim replaced (see the SQL journal)
            error = orphaned_attempt_error(task.attempt, task.owner, run.id)
            dispatches += self._fail_attempt(task, error, True, now, wake_run=False).dispatches
        if run.cancel_requested_at is not None and not run.cancel_journaled:
            self._append(run, Kind.CANCEL_REQUESTED, None, None, {})
            run.cancel_journaled = True
            dispatches += self._cancel_pending(run, now, journal=True)
        finished = [
            t
            for t in self._tasks.values()
            if t.run_id == run.id and t.state in ("completed", "failed") and t.outcome_seq is None
        ]
        for task in sorted(finished, key=lambda t: (t.finished_at or now, t.id)):
            kind, payload = task_outcome(task.spec.kind, task.state, task.result, task.error, task.attempt)
            task.outcome_seq = self._append(run, kind, task.command_id, task.name, payload)
        pending = sorted(
            (t for t in self._timers.values() if t.run_id == run.id and t.state == "pending"),
            key=lambda t: t.command_id,
        )
        inbox = [s for s in self._signals if s.run_id == run.id and s.consumed_seq is None]
        for timer in pending:
            seq: int | None = None
            due = timer.fire_at is not None and timer.fire_at <= now
            if timer.kind == "signal":
                match = next((s for s in inbox if s.name == timer.name), None)
                if match is not None:
                    inbox.remove(match)
                    payload = {"payload": match.payload, "signal_id": match.id}
                    seq = match.consumed_seq = self._append(
                        run, Kind.SIGNAL_RECEIVED, timer.command_id, timer.name, payload
                    )
                elif due:
                    seq = self._append(run, Kind.SIGNAL_TIMED_OUT, timer.command_id, timer.name, {})
            elif due:
                assert timer.fire_at is not None
                seq = self._append(
                    run, Kind.TIMER_FIRED, timer.command_id, None, {"fire_at": timer.fire_at.isoformat()}
                )
            if seq is not None:
                timer.state, timer.outcome_seq = "fired", seq
        children = [
            c
            for c in self._runs.values()
            if c.parent_run_id == run.id and c.state in CHILD_OUTCOMES and not c.reported_to_parent
        ]
        for child in sorted(children, key=lambda c: (c.updated_at or now, c.id)):
            kind, payload = child_outcome(child.state, child.id, child.result, child.error)
            self._append(run, kind, child.parent_command_id, child.workflow, payload)
            child.reported_to_parent = True
        return dispatches

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
        inline_claim = None
        with self._lock:
            run = self._held(lease)
            now, old_seq = self.clock(), run.last_seq
            self._check_commands(run, commands, child_versions)
            if completed is not None and run.wake_seq != wake_seq:
                return StepResult(last_seq=run.last_seq, declined=True)
            if completed is not None:
                done = self._inline_task(lease, completed)
                event_kind, payload = task_outcome(done.spec.kind, "completed", completed.result, None, done.attempt)
                done.outcome_seq = self._append(run, event_kind, completed.command_id, done.name, payload)
                done.state, done.result, done.lease_expires_at = "completed", roundtrip(completed.result), None
                done.finished_at = done.updated_at = now
                key = completed.claim.idempotency_key
                if key and key not in self._results:
                    self._results[key] = {"activity": done.name, "result": done.result, "run_id": run.id}
            assert continue_version is not None or not isinstance(outcome, ContinueAsNew)
            dispatches: list[Dispatch] = []
            immediate = False
            for cmd in commands:
                self._append(run, cmd.kind, cmd.command_id, cmd.name, dict(cmd.payload))
                assert cmd.command_id is not None
                if cmd.kind in SCHEDULE_KINDS:
                    dispatch = self._schedule_task(run, cmd, now)
                    immediate = immediate or dispatch is None
                    here = dispatch is not None and inline is not None and cmd.command_id == inline.command_id
                    claim = self._claim_locked(dispatch.id, 1, lease.owner) if dispatch and here else None
                    if claim is not None:
                        self._tasks[claim.task_id].run_lease_token = lease.token
                    inline_claim = claim or inline_claim
                    dispatches += [dispatch] if dispatch and claim is None else []
                elif cmd.kind in (Kind.TIMER_SCHEDULED, Kind.SIGNAL_WAIT):
                    kind = "sleep" if cmd.kind is Kind.TIMER_SCHEDULED else "signal"
                    self._timers[(run.id, cmd.command_id)] = TimerRow(
                        run.id, cmd.command_id, kind, cmd.name, wait_deadline(cmd)
                    )
                    inbox = (s for s in self._signals if s.run_id == run.id and s.consumed_seq is None)
                    immediate = immediate or (kind == "signal" and any(s.name == cmd.name for s in inbox))
                elif cmd.kind is Kind.CHILD_STARTED:
                    child = child_run(cmd, run.id, run.correlation_id, child_versions)
                    if child.id not in self._runs:
                        self._insert_run(child, now)
                    dispatches.append(
                        Dispatch("replay", child.id, label=child.workflow, version_hash=child.version_hash)
                    )
            result = StepResult(last_seq=run.last_seq, now=now)
            result.lease_kept = (
                outcome is None
                and inline is not None
                and inline_claim is not None
                and not immediate
                and run.wake_seq == wake_seq
            )
            if outcome is None and not result.lease_kept:  # a kept lease stays as it is: its owner renews it
                result.runnable_again = immediate or run.wake_seq != wake_seq
                run.state = "suspended"
                run.next_wakeup_at = now if result.runnable_again else self._earliest_timer(run.id)
                result.next_wakeup_at = None if result.runnable_again else run.next_wakeup_at
                self._maybe_snapshot(run, old_seq)
            elif outcome is not None:
                dispatches += self._finish(run, outcome, continue_version, now)
                result.finished_state = run.state
                result.continued_run_id = ending(run.id, outcome).next_run_id
                self._snapshots.pop(run.id, None)
            if not result.lease_kept:
                run.lease_owner = run.lease_expires_at = None
            run.dispatched_at = None
            run.updated_at = now
            result.last_seq = run.last_seq
            result.dispatches = dispatches
            result.inline_claim = inline_claim
            return result

    def _inline_task(self, lease: Lease, completed: CompletedAttempt) -> TaskRow:
        """The task of an inline attempt still owned by the lease holder (else LeaseLost, nothing changed)."""
        claim = completed.claim
        task = self._tasks.get(claim.task_id)
        if task is None or task.attempt != claim.attempt or task.state != "running":
            raise inline_attempt_lost(lease, claim)
        return task

    def _check_commands(self, run: RunRow, commands: Sequence[NewEvent], child_versions: dict[str, Any]) -> None:
        """Refuse a decision the SQL journal's transaction would roll back, before anything changes."""
        for cmd in commands:
            if cmd.kind is Kind.CHILD_STARTED:
                if (cmd.name or "") not in child_versions:
                    raise KeyError(cmd.name)
                existing = self._runs.get(cmd.payload["run_id"])
                if existing is not None and existing.parent_run_id != run.id:
                    raise RunConflict(
                        f"child run id {existing.id!r} is already used by another run", run_id=existing.id
                    )
            taken = (cmd.kind in SCHEDULE_KINDS and task_id(run.id, cmd.command_id or 0) in self._tasks) or (
                cmd.kind in (Kind.TIMER_SCHEDULED, Kind.SIGNAL_WAIT) and (run.id, cmd.command_id) in self._timers
            )
            if taken:
                raise JournalError(f"the journal refused a write: command {cmd.command_id} of {run.id} exists")

    def _schedule_task(self, run: RunRow, cmd: NewEvent, now: datetime) -> Dispatch | None:
        """Insert the task row; None when an idempotency key already holds the result."""
        spec = task_spec(cmd, self.activity_timeout)
        stored = self._results.get(spec.idempotency_key) if spec.idempotency_key else None
        tid = task_id(run.id, cmd.command_id or 0)
        spec = dataclasses.replace(spec, arguments=roundtrip(spec.arguments), retry_policy=roundtrip(spec.retry_policy))
        task = TaskRow(tid, run.id, cmd.command_id or 0, cmd.name or "", spec, "scheduled", now, now, dispatched_at=now)
        self._tasks[tid] = task
        if stored is not None:
            task.state, task.result, task.finished_at = "completed", stored["result"], now
            return None
        return attempt_of(task)

    def _earliest_timer(self, run_id: str) -> datetime | None:
        due = [t.fire_at for t in self._timers.values() if t.run_id == run_id and t.state == "pending" and t.fire_at]
        return min(due, default=None)

    def _finish(
        self, run: RunRow, outcome: Outcome, continue_version: tuple[str, int] | None, now: datetime
    ) -> list[Dispatch]:
        end = ending(run.id, outcome)
        self._append(run, end.kind, None, None, end.payload)
        run.state, run.next_wakeup_at = end.state, None
        for name, value in end.fields.items():
            setattr(run, name, roundtrip(value))
        dispatches: list[Dispatch] = []
        if end.next_run_id is not None:
            assert isinstance(outcome, ContinueAsNew) and continue_version is not None
            nxt = self._insert_run(continued_run(run, run.trace_context, outcome, continue_version), now)
            # A cancel that reached this run after its body decided to continue stops the next run.
            nxt.cancel_requested_at = run.cancel_requested_at
            dispatches.append(replay_of(nxt))
        dispatches += self._cancel_pending(run, now, journal=False)
        if run.parent_run_id and run.state != "continued":
            dispatches += self._poke(run.parent_run_id, now)
        return dispatches

    def renew(self, lease: Lease, ttl: float) -> None:
        with self._lock:
            run = self._runs.get(lease.run_id)
            if run is None or run.lease_token != lease.token or run.state != "running":
                raise renewal_refused(lease)
            run.lease_expires_at = self.clock() + timedelta(seconds=ttl)

    def release(self, lease: Lease, stuck_reason: str | None = None) -> None:
        with self._lock:
            run = self._held(lease)
            run.state, run.lease_owner, run.lease_expires_at, run.stuck_reason = "suspended", None, None, stuck_reason
            if stuck_reason is None:
                run.next_wakeup_at = self.clock()
