"""The tables of the in-memory journal and the writes every part of it shares.

Rows are small dataclasses in plain dicts and lists behind one lock; every
method here expects the lock to be held by its caller.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .. import snapshots
from ..config import DEFAULT_SNAPSHOT_EVERY
from ..errors import RunFinished, RunNotFound
from ..events import Event, Kind
from ..serialization import roundtrip
from ..snapshots import Snapshot
from .base import ActivityClaim, ActivityOutcome, Dispatch, Lease, NewRun, RunRecord
from .rules import RUNNABLE, TERMINAL, TaskSpec, cancelled_task_outcome, lease_lost, retry_delay


def utcnow() -> datetime:
    """The current aware UTC time: the default clock."""
    return datetime.now(timezone.utc)


@dataclass
class RunRow:
    """A run, with the columns of ``continuum_runs``."""

    id: str
    workflow: str
    version_hash: str
    version: int
    input: Any
    created_at: datetime
    updated_at: datetime
    state: str = "pending"
    result: Any = None
    error: Any = None
    lease_token: int = 0
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    next_wakeup_at: datetime | None = None
    dispatched_at: datetime | None = None
    wake_seq: int = 0
    last_seq: int = 0
    parent_run_id: str | None = None
    parent_command_id: int | None = None
    correlation_id: str = ""
    continued_from_run_id: str | None = None
    cancel_requested_at: datetime | None = None
    cancel_journaled: bool = False
    reported_to_parent: bool = False
    stuck_reason: str | None = None
    trace_context: dict[str, str] = field(default_factory=dict)

    def record(self) -> RunRecord:
        """The run as the contract hands it out (JSON fields copied)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(RunRecord) if f.name != "cancel_requested"}
        values.update(input=roundtrip(self.input), result=roundtrip(self.result), error=roundtrip(self.error))
        return RunRecord(**values, cancel_requested=self.cancel_requested_at is not None)


@dataclass
class TaskRow:
    """An activity or compensation task; ``spec`` holds what its command fixed."""

    id: str
    run_id: str
    command_id: int
    name: str
    spec: TaskSpec
    state: str
    created_at: datetime
    updated_at: datetime
    attempt: int = 1
    retry_at: datetime | None = None
    dispatched_at: datetime | None = None
    lease_expires_at: datetime | None = None
    owner: str | None = None
    #: The run lease an inline attempt runs under (None for a continuum.activity attempt).
    run_lease_token: int | None = None
    result: Any = None
    error: Any = None
    outcome_seq: int | None = None
    finished_at: datetime | None = None


@dataclass
class TimerRow:
    """A pending wait of a run: a ``sleep`` timer or a ``signal`` wait (with its timeout)."""

    run_id: str
    command_id: int
    kind: str
    name: str | None
    fire_at: datetime | None
    state: str = "pending"
    outcome_seq: int | None = None


@dataclass
class SignalRow:
    """A signal in a run's inbox; ``consumed_seq`` is set when a wait takes it."""

    id: int
    run_id: str
    name: str
    payload: Any
    consumed_seq: int | None = None


class MemoryTables:
    """The journal's state and the writes shared by its operations."""

    def __init__(
        self,
        clock: Callable[[], datetime] = utcnow,
        *,
        activity_timeout: float = 300.0,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
    ) -> None:
        self.clock = clock
        self.activity_timeout = activity_timeout
        self.snapshot_every = snapshot_every
        self._snapshots: dict[str, Snapshot] = {}
        self._lock = threading.Lock()
        self._runs: dict[str, RunRow] = {}
        self._events: dict[str, list[Event]] = {}
        self._tasks: dict[str, TaskRow] = {}
        self._timers: dict[tuple[str, int], TimerRow] = {}
        self._signals: list[SignalRow] = []
        self._results: dict[str, dict[str, Any]] = {}
        self._versions: dict[tuple[str, str, str], dict[str, Any]] = {}

    def snapshot(self) -> dict[str, Any]:
        """Every table as plain data, for comparing the whole journal before and after an operation."""
        with self._lock:
            return copy.deepcopy(
                {
                    "runs": [dataclasses.asdict(r) for r in self._runs.values()],
                    "events": {k: [dataclasses.asdict(e) for e in v] for k, v in self._events.items()},
                    "tasks": [dataclasses.asdict(t) for t in self._tasks.values()],
                    "timers": [dataclasses.asdict(t) for t in self._timers.values()],
                    "signals": [dataclasses.asdict(s) for s in self._signals],
                    "results": self._results,
                    "versions": list(self._versions.values()),
                    "snapshots": {k: dataclasses.asdict(v) for k, v in self._snapshots.items()},
                }
            )

    def _claim_locked(self, task_id: str, attempt: int, owner: str) -> ActivityClaim | None:
        """Start an attempt; the caller holds the lock. None when it is not claimable now."""
        now = self.clock()
        task = self._tasks.get(task_id)
        if task is None or task.attempt != attempt or task.state != "scheduled":
            return None
        if task.retry_at is not None and task.retry_at > now:
            return None
        run = self._runs[task.run_id]
        # A cancel the run has not seen yet holds its activities back; its next step drops them.
        if task.spec.kind == "activity" and run.cancel_requested_at is not None and not run.cancel_journaled:
            return None
        task.state, task.owner, task.dispatched_at, task.updated_at = "running", owner, None, now
        task.lease_expires_at = now + timedelta(seconds=task.spec.timeout or self.activity_timeout)
        args = roundtrip(task.spec.arguments)
        return ActivityClaim(
            task_id=task.id,
            run_id=task.run_id,
            kind=task.spec.kind,
            name=task.name,
            args=args.get("args", []),
            kwargs=args.get("kwargs", {}),
            attempt=task.attempt,
            max_attempts=task.spec.max_attempts,
            retry_policy=roundtrip(task.spec.retry_policy),
            timeout=task.spec.timeout,
            idempotency_key=task.spec.idempotency_key,
            compensated_result=args.get("result"),
            workflow=run.workflow,
            trace_context=dict(run.trace_context),
        )

    def _fail_attempt(
        self, task: TaskRow, error: dict[str, Any], retryable: bool, now: datetime, *, wake_run: bool = True
    ) -> ActivityOutcome:
        """Retry the attempt by its policy, or fail the task and wake its run (unless the caller holds it)."""
        task.error, task.lease_expires_at, task.updated_at = roundtrip(error), None, now
        if retryable and task.attempt < task.spec.max_attempts and self._may_retry(task):
            task.retry_at = now + timedelta(seconds=retry_delay(task.spec.retry_policy, task.attempt))
            task.state, task.dispatched_at = "scheduled", now
            task.attempt += 1
            return ActivityOutcome("retry", [dataclasses.replace(attempt_of(task), due=task.retry_at)])
        task.state, task.finished_at = "failed", now
        return ActivityOutcome("failed", self._poke(task.run_id, now) if wake_run else [])

    def _may_retry(self, task: TaskRow) -> bool:
        """Not once the run ended, nor an activity a cancel overtook (cleanup scheduled after it keeps retrying)."""
        run = self._runs.get(task.run_id)
        if run is None or run.state in TERMINAL:
            return False
        if task.spec.kind != "activity" or run.cancel_requested_at is None:
            return True
        if not run.cancel_journaled:
            return False
        seqs = {
            e.kind: e.seq
            for e in self._events[run.id]
            if e.kind is Kind.CANCEL_REQUESTED
            or (e.kind is Kind.ACTIVITY_SCHEDULED and e.command_id == task.command_id)
        }
        return seqs.get(Kind.ACTIVITY_SCHEDULED, 0) > seqs.get(Kind.CANCEL_REQUESTED, 0)

    def _cancel_pending(self, run: RunRow, now: datetime, *, journal: bool) -> list[Dispatch]:
        """Drop the run's pending timers and unstarted tasks; ask its live descendants to stop.

        With ``journal`` (a cancel the body is about to see) compensations are spared, since a
        saga runs them as its cleanup. A task running now may finish but is not attempted again.
        """
        kinds = ("activity",) if journal else ("activity", "compensation")
        for timer in self._timers.values():
            if timer.run_id == run.id and timer.state == "pending":
                timer.state = "cancelled"
        for task in self._tasks.values():
            if task.run_id == run.id and task.spec.kind in kinds and task.state == "scheduled":
                task.state, task.updated_at, task.finished_at = "cancelled", now, now
                if journal:
                    kind, payload = cancelled_task_outcome(task.spec.kind, task.attempt)
                    task.outcome_seq = self._append(run, kind, task.command_id, task.name, payload)
        return self._cancel_descendants(run.id, now)

    def _cancel_descendants(self, run_id: str, now: datetime) -> list[Dispatch]:
        """Ask every live descendant of ``run_id`` (children, their children...) to stop, and wake each."""
        dispatches: list[Dispatch] = []
        level = {run_id}
        while level:
            children = [r for r in self._runs.values() if r.parent_run_id in level and r.state not in TERMINAL]
            for child in children:
                child.cancel_requested_at = child.cancel_requested_at or now
            for child in children:
                dispatches += self._poke(child.id, now)
            level = {c.id for c in children}
        return dispatches

    def _successor(self, run_id: str) -> str | None:
        return next((r.id for r in self._runs.values() if r.continued_from_run_id == run_id), None)

    def _run(self, run_id: str) -> RunRow:
        run = self._runs.get(run_id)
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r}", run_id=run_id)
        return run

    def _open_run(self, run_id: str, action: str) -> RunRow:
        run = self._run(run_id)
        if run.state in TERMINAL:
            raise RunFinished(f"run {run_id} is {run.state}; it cannot {action}.", run_id=run_id, state=run.state)
        return run

    def _held(self, lease: Lease) -> RunRow:
        run = self._runs.get(lease.run_id)
        if run is None or run.lease_token != lease.token or run.state != "running":
            raise lease_lost(lease, None if run is None else run.state, None if run is None else run.lease_token)
        return run

    def _insert_run(self, new: NewRun, now: datetime) -> RunRow:
        run = RunRow(
            id=new.id,
            workflow=new.workflow,
            version_hash=new.version_hash,
            version=new.version,
            input=roundtrip(new.input),
            created_at=now,
            updated_at=now,
            next_wakeup_at=now,
            dispatched_at=now,
            parent_run_id=new.parent_run_id,
            parent_command_id=new.parent_command_id,
            correlation_id=new.correlation_id or new.id,
            continued_from_run_id=new.continued_from_run_id,
            trace_context=dict(new.trace_context),
        )
        self._runs[run.id] = run
        self._events[run.id] = []
        started = {"input": new.input, "workflow": new.workflow, "version_hash": new.version_hash}
        self._append(run, Kind.RUN_STARTED, None, None, started)
        return run

    def _append(self, run: RunRow, kind: Kind, command_id: int | None, name: str | None, payload: Any) -> int:
        run.last_seq += 1
        self._events[run.id].append(Event(run.last_seq, kind, command_id, name, roundtrip(payload)))
        return run.last_seq

    def _maybe_snapshot(self, run: RunRow, old_seq: int) -> None:
        """Refresh the run's snapshot when ``last_seq`` went past a multiple of ``snapshot_every``."""
        if snapshots.due(old_seq, run.last_seq, self.snapshot_every):
            previous = self._snapshots.get(run.id)
            after = previous.upto if previous is not None else 0
            self._snapshots[run.id] = snapshots.extend(previous, self._events[run.id][after:], run.last_seq)

    def _replay_log(self, run_id: str, after_seq: int) -> tuple[list[Event], int]:
        """Events after ``after_seq``; from scratch, the latest snapshot plus the events after it."""
        snap = self._snapshots.get(run_id) if after_seq == 0 else None
        start = snap.upto if snap is not None else after_seq
        loaded = [*(snap.events if snap else []), *self._events[run_id][start:]]
        return [copy_event(e) for e in loaded], snap.upto if snap else 0

    def _poke(self, run_id: str, now: datetime) -> list[Dispatch]:
        """Note new input for a run; a dispatch if nobody is about to look at it."""
        run = self._runs.get(run_id)
        if run is None or run.state in TERMINAL:
            return []
        run.wake_seq += 1
        if run.state not in RUNNABLE:
            return []
        run.next_wakeup_at = now
        if run.dispatched_at is not None or run.stuck_reason is not None:
            return []
        run.dispatched_at = now
        return [replay_of(run)]


#: A kind of due work: the row's sort key when it is due now, else None (the twins of ``sql_sweep``'s queries).
Due = Callable[[Any, datetime], "datetime | None"]


def due_run(run: RunRow, now: datetime) -> datetime | None:
    """Runnable, not parked, wake-up time reached: its wake-up time."""
    at = run.next_wakeup_at
    return at if run.state in RUNNABLE and run.stuck_reason is None and at is not None and at <= now else None


def expired_run(run: RunRow, now: datetime) -> datetime | None:
    """Held by a lease its holder stopped renewing: the lease's end."""
    at = run.lease_expires_at
    return at if run.state == "running" and at is not None and at < now else None


def claimable(run: RunRow, now: datetime) -> bool:
    """Due, or held by a lease that expired: what ``begin_step`` may claim."""
    return due_run(run, now) is not None or expired_run(run, now) is not None


def new_task(task: TaskRow, now: datetime) -> datetime | None:
    """Waiting for its first attempt: its creation time."""
    return task.created_at if task.state == "scheduled" and task.retry_at is None else None


def retry_task(task: TaskRow, now: datetime) -> datetime | None:
    """Past its retry back-off: its retry time."""
    at = task.retry_at
    return at if task.state == "scheduled" and at is not None and at <= now else None


def expired_task(task: TaskRow, now: datetime) -> datetime | None:
    """An attempt whose worker died or overran: its lease's end."""
    at = task.lease_expires_at
    return at if task.state == "running" and at is not None and at < now else None


def replay_of(run: RunRow) -> Dispatch:
    """The replay message of a run, routed to its version."""
    return Dispatch("replay", run.id, label=run.workflow, version_hash=run.version_hash)


def attempt_of(task: TaskRow) -> Dispatch:
    """The message of a task's current attempt."""
    return Dispatch("activity", task.id, queue=task.spec.queue, attempt=task.attempt, label=task.name)


def copy_event(event: Event) -> Event:
    """An event with its own copy of the payload, so a reader's changes never reach the journal."""
    return dataclasses.replace(event, payload=roundtrip(dict(event.payload)))
