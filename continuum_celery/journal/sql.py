"""The SQL journal: SQLAlchemy Core over psycopg 3 (PostgreSQL) or sqlite3 (embedded).

One transaction per transition. Every write to a run locks its row and checks
the caller's fencing token first; a stale token raises ``LeaseLost`` before
anything is written. Database errors are translated here and nowhere above.
Time is the database's (``now()``) on PostgreSQL, so worker clocks never decide
a lease; SQLite, a single-machine default, uses the local clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import (
    InvalidArgument,
    JournalError,
    LeaseLost,
    RunConflict,
    RunFinished,
    RunNotFound,
)
from ..events import Event, Kind, NewEvent
from ..replay import Cancelled, Complete, ContinueAsNew, Fail, Outcome
from ..serialization import dumps, loads
from .base import (
    ActivityClaim,
    ActivityOutcome,
    Dispatch,
    Journal,
    Lease,
    NewRun,
    RunRecord,
    StepResult,
    StepStart,
)
from .schema import (
    TERMINAL_STATES,
    UTCDateTime,
    activity_results,
    activity_tasks,
    check_schema,
    events,
    runs,
    signals,
    timers,
    workflow_versions,
)

_RUNNABLE = ("pending", "suspended")
_SCHEDULE_KINDS = {Kind.ACTIVITY_SCHEDULED: "activity", Kind.COMPENSATION_SCHEDULED: "compensation"}
_TASK_OUTCOMES = {
    ("activity", "completed"): Kind.ACTIVITY_COMPLETED,
    ("activity", "failed"): Kind.ACTIVITY_FAILED,
    ("compensation", "completed"): Kind.COMPENSATION_COMPLETED,
    ("compensation", "failed"): Kind.COMPENSATION_FAILED,
}
_CHILD_OUTCOMES = {"completed": Kind.CHILD_COMPLETED, "failed": Kind.CHILD_FAILED, "cancelled": Kind.CHILD_CANCELLED}


def normalise_url(url: str) -> str:
    """Pick psycopg 3 for plain ``postgresql://`` URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine tuned for the journal (pre-ping on PostgreSQL; WAL and immediate locks on SQLite)."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event emit BEGIN IMMEDIATE: one writer at a time, no upgrade deadlocks.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    return sa.create_engine(url, **kwargs)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _run_record(row: Any) -> RunRecord:
    return RunRecord(
        id=row.id,
        workflow=row.workflow,
        version_hash=row.version_hash,
        version=row.version,
        state=row.state,
        input=loads(row.input),
        result=loads(row.result),
        error=loads(row.error),
        lease_token=row.lease_token,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        next_wakeup_at=row.next_wakeup_at,
        last_seq=row.last_seq,
        parent_run_id=row.parent_run_id,
        parent_command_id=row.parent_command_id,
        correlation_id=row.correlation_id,
        continued_from_run_id=row.continued_from_run_id,
        cancel_requested=row.cancel_requested_at is not None,
        stuck_reason=row.stuck_reason,
        trace_context=loads(row.trace_context) or {},
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _event(row: Any) -> Event:
    return Event(seq=row.seq, kind=Kind(row.kind), command_id=row.command_id, name=row.name, payload=loads(row.payload))


class SQLJournal(Journal):
    """The production journal.

    Args:
        url: SQLAlchemy URL (``postgresql://...`` or ``sqlite:///path``).
        activity_timeout: default start-to-close seconds of an activity attempt.
        check: refuse to start on a database that is not migrated.
        queue: default queue for dispatches that name none.
    """

    def __init__(
        self, url: str, *, activity_timeout: float = 300.0, check: bool = True, queue: str | None = None
    ) -> None:
        self.engine = make_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.activity_timeout = activity_timeout
        self.queue = queue
        if check:
            check_schema(self.engine)

    # ---- dialect hooks -----------------------------------------------------------------

    def _now(self) -> Any:
        return sa.literal(_utcnow(), UTCDateTime()) if self.is_sqlite else sa.func.now()

    def _after(self, seconds: float) -> Any:
        if self.is_sqlite:
            return sa.literal(_utcnow() + timedelta(seconds=seconds), UTCDateTime())
        return sa.func.now() + sa.literal(timedelta(seconds=seconds), sa.Interval())

    def _insert(self, table: sa.Table) -> Any:
        return (sqlite.insert if self.is_sqlite else postgresql.insert)(table)

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.IntegrityError as exc:
            raise JournalError(f"the journal refused a write: {exc.orig}") from exc

    def close(self) -> None:
        self.engine.dispose()

    # ---- runs --------------------------------------------------------------------------

    def create_run(self, run: NewRun) -> tuple[RunRecord, bool]:
        try:
            with self.engine.begin() as conn:
                existing = conn.execute(sa.select(runs).where(runs.c.id == run.id)).first()
                if existing is not None:
                    return self._same_run(existing, run), False
                self._insert_run(conn, run)
                row = conn.execute(sa.select(runs).where(runs.c.id == run.id)).one()
                return _run_record(row), True
        except sa.exc.IntegrityError:
            # Two starts raced on one id: the other won; answer as for an existing run.
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(runs).where(runs.c.id == run.id)).one()
            return self._same_run(row, run), False

    @staticmethod
    def _same_run(row: Any, run: NewRun) -> RunRecord:
        record = _run_record(row)
        if record.workflow != run.workflow or dumps(record.input) != dumps(run.input):
            raise RunConflict(
                f"run id {run.id!r} already names a run of {record.workflow} with another input; "
                "use a new run_id, or the same input to get the existing run's handle.",
                run_id=run.id,
            )
        return record

    def _insert_run(self, conn: sa.Connection, run: NewRun) -> None:
        now = self._now()
        conn.execute(
            runs.insert().values(
                id=run.id,
                workflow=run.workflow,
                version_hash=run.version_hash,
                version=run.version,
                state="pending",
                input=dumps(run.input),
                next_wakeup_at=now,
                dispatched_at=now,
                last_seq=1,
                parent_run_id=run.parent_run_id,
                parent_command_id=run.parent_command_id,
                correlation_id=run.correlation_id or run.id,
                continued_from_run_id=run.continued_from_run_id,
                trace_context=dumps(run.trace_context) if run.trace_context else None,
                created_at=now,
                updated_at=now,
            )
        )
        conn.execute(
            events.insert().values(
                run_id=run.id,
                seq=1,
                kind=Kind.RUN_STARTED.value,
                payload=dumps({"input": run.input, "workflow": run.workflow, "version_hash": run.version_hash}),
                created_at=now,
            )
        )

    def get_run(self, run_id: str) -> RunRecord:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}", run_id=run_id)
        return _run_record(row)

    def history(self, run_id: str, after_seq: int = 0) -> list[Event]:
        with self.engine.connect() as conn:
            return self._events_after(conn, run_id, after_seq)

    def _events_after(self, conn: sa.Connection, run_id: str, after_seq: int) -> list[Event]:
        rows = conn.execute(
            sa.select(events).where(events.c.run_id == run_id, events.c.seq > after_seq).order_by(events.c.seq)
        )
        return [_event(r) for r in rows]

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
            return [_run_record(r) for r in conn.execute(query)]

    def continued_to(self, run_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(runs.c.id).where(runs.c.continued_from_run_id == run_id)).scalar()

    # ---- steps -------------------------------------------------------------------------

    def begin_step(self, run_id: str, owner: str, ttl: float, after_seq: int) -> StepStart | None:
        with self._tx() as conn:
            now = self._now()
            claimable = sa.or_(
                sa.and_(
                    runs.c.state.in_(_RUNNABLE),
                    runs.c.stuck_reason.is_(None),
                    runs.c.next_wakeup_at <= now,
                ),
                sa.and_(runs.c.state == "running", runs.c.lease_expires_at < now),
            )
            row = conn.execute(
                runs.update()
                .where(runs.c.id == run_id, claimable)
                .values(
                    state="running",
                    lease_token=runs.c.lease_token + 1,
                    lease_owner=owner,
                    lease_expires_at=self._after(ttl),
                    dispatched_at=None,
                    updated_at=now,
                )
                .returning(*runs.c, now.label("db_now"))
            ).first()
            if row is None:
                return None
            appender = _Appender(run_id, row.last_seq, row.db_now)
            dispatches = self._resolve(conn, row, appender)
            appender.flush(conn, self)
            lease = Lease(run_id=run_id, token=row.lease_token, owner=owner)
            record = _run_record(row)
            return StepStart(
                lease=lease,
                run=record,
                events=self._events_after(conn, run_id, after_seq),
                now=row.db_now,
                wake_seq=row.wake_seq,
                dispatches=dispatches,
            )

    def _resolve(self, conn: sa.Connection, run: Any, out: _Appender) -> list[Dispatch]:
        """Append every outcome that is now available to the claimed run."""
        dispatches: list[Dispatch] = []
        if run.cancel_requested_at is not None and not run.cancel_journaled:
            out.add(Kind.CANCEL_REQUESTED, None, None, {})
            conn.execute(runs.update().where(runs.c.id == run.id).values(cancel_journaled=True))
            dispatches += self._cancel_pending(conn, run.id, out)
        finished = conn.execute(
            sa.select(activity_tasks)
            .where(
                activity_tasks.c.run_id == run.id,
                activity_tasks.c.state.in_(("completed", "failed")),
                activity_tasks.c.outcome_seq.is_(None),
            )
            .order_by(activity_tasks.c.finished_at, activity_tasks.c.id)
        ).all()
        for task in finished:
            payload = (
                {"result": loads(task.result), "attempts": task.attempt}
                if task.state == "completed"
                else {"error": loads(task.error), "attempts": task.attempt}
            )
            seq = out.add(_TASK_OUTCOMES[(task.kind, task.state)], task.command_id, task.name, payload)
            conn.execute(activity_tasks.update().where(activity_tasks.c.id == task.id).values(outcome_seq=seq))
        pending = conn.execute(
            sa.select(timers).where(timers.c.run_id == run.id, timers.c.state == "pending").order_by(timers.c.command_id)
        ).all()
        inbox: list[Any] = []
        if any(t.kind == "signal" for t in pending):
            inbox = conn.execute(
                sa.select(signals)
                .where(signals.c.run_id == run.id, signals.c.consumed_seq.is_(None))
                .order_by(signals.c.id)
            ).all()
        for timer in pending:
            seq = None
            if timer.kind == "signal":
                match = next((s for s in inbox if s.name == timer.name), None)
                if match is not None:
                    inbox.remove(match)
                    seq = out.add(
                        Kind.SIGNAL_RECEIVED,
                        timer.command_id,
                        timer.name,
                        {"payload": loads(match.payload), "signal_id": match.id},
                    )
                    conn.execute(signals.update().where(signals.c.id == match.id).values(consumed_seq=seq))
                elif timer.fire_at is not None and timer.fire_at <= out.now:
                    seq = out.add(Kind.SIGNAL_TIMED_OUT, timer.command_id, timer.name, {})
            elif timer.fire_at is not None and timer.fire_at <= out.now:
                seq = out.add(Kind.TIMER_FIRED, timer.command_id, None, {"fire_at": timer.fire_at.isoformat()})
            if seq is not None:
                conn.execute(
                    timers.update()
                    .where(timers.c.run_id == run.id, timers.c.command_id == timer.command_id)
                    .values(state="fired", outcome_seq=seq)
                )
        children = conn.execute(
            sa.select(runs.c.id, runs.c.state, runs.c.result, runs.c.error, runs.c.parent_command_id, runs.c.workflow)
            .where(
                runs.c.parent_run_id == run.id,
                runs.c.state.in_(tuple(_CHILD_OUTCOMES)),
                runs.c.reported_to_parent.is_(False),
            )
            .order_by(runs.c.updated_at, runs.c.id)
        ).all()
        for child in children:
            payload = {"run_id": child.id, "result": loads(child.result), "error": loads(child.error)}
            out.add(_CHILD_OUTCOMES[child.state], child.parent_command_id, child.workflow, payload)
            conn.execute(runs.update().where(runs.c.id == child.id).values(reported_to_parent=True))
        return dispatches

    def _cancel_pending(self, conn: sa.Connection, run_id: str, out: _Appender | None) -> list[Dispatch]:
        """Drop a run's pending timers and unstarted tasks; ask its live children to stop."""
        conn.execute(timers.update().where(timers.c.run_id == run_id, timers.c.state == "pending").values(state="cancelled"))
        unstarted = conn.execute(
            activity_tasks.update()
            .where(activity_tasks.c.run_id == run_id, activity_tasks.c.state == "scheduled")
            .values(state="cancelled", updated_at=self._now(), finished_at=self._now())
            .returning(activity_tasks.c.id, activity_tasks.c.command_id, activity_tasks.c.name, activity_tasks.c.kind, activity_tasks.c.attempt)
        ).all()
        if out is not None:
            for task in unstarted:
                kind = Kind.ACTIVITY_FAILED if task.kind == "activity" else Kind.COMPENSATION_FAILED
                error = {"type": "RunCancelled", "module": "continuum_celery.errors", "message": "the run was cancelled before this task started"}
                seq = out.add(kind, task.command_id, task.name, {"error": error, "attempts": task.attempt - 1})
                conn.execute(activity_tasks.update().where(activity_tasks.c.id == task.id).values(outcome_seq=seq))
        dispatches = []
        children = conn.execute(
            sa.select(runs.c.id).where(runs.c.parent_run_id == run_id, runs.c.state.not_in(TERMINAL_STATES))
        ).scalars().all()
        for child_id in children:
            conn.execute(
                runs.update().where(runs.c.id == child_id, runs.c.cancel_requested_at.is_(None)).values(cancel_requested_at=self._now())
            )
            dispatch = self._poke(conn, child_id)
            if dispatch:
                dispatches.append(dispatch)
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
    ) -> StepResult:
        with self._tx() as conn:
            row = self._locked_run(conn, lease)
            now = self._now()
            out = _Appender(lease.run_id, row.last_seq, None)
            dispatches: list[Dispatch] = []
            immediate = False
            for cmd in commands:
                seq = out.add(cmd.kind, cmd.command_id, cmd.name, dict(cmd.payload))
                assert cmd.command_id is not None
                if cmd.kind in _SCHEDULE_KINDS:
                    dispatch = self._schedule_task(conn, lease.run_id, cmd, _SCHEDULE_KINDS[cmd.kind])
                    if dispatch is None:
                        immediate = True
                    else:
                        dispatches.append(dispatch)
                elif cmd.kind in (Kind.TIMER_SCHEDULED, Kind.SIGNAL_WAIT):
                    at = cmd.payload.get("fire_at") or cmd.payload.get("timeout_at")
                    conn.execute(
                        timers.insert().values(
                            run_id=lease.run_id,
                            command_id=cmd.command_id,
                            kind="sleep" if cmd.kind is Kind.TIMER_SCHEDULED else "signal",
                            name=cmd.name,
                            fire_at=datetime.fromisoformat(at) if at else None,
                            state="pending",
                            created_at=now,
                        )
                    )
                    if cmd.kind is Kind.SIGNAL_WAIT and self._has_signal(conn, lease.run_id, cmd.name or ""):
                        immediate = True
                elif cmd.kind is Kind.CHILD_STARTED:
                    version_hash, version = child_versions[cmd.name or ""]
                    child = NewRun(
                        id=cmd.payload["run_id"],
                        workflow=cmd.name or "",
                        version_hash=version_hash,
                        version=version,
                        input=cmd.payload.get("input"),
                        parent_run_id=lease.run_id,
                        parent_command_id=cmd.command_id,
                    )
                    self._start_child(conn, child)
                    dispatches.append(Dispatch("replay", child.id, label=child.workflow))
                del seq
            result = StepResult(last_seq=out.seq)
            if outcome is None:
                runnable = immediate or row.wake_seq != wake_seq
                wakeup = now if runnable else self._earliest_timer(lease.run_id)
                values: dict[str, Any] = {"state": "suspended", "next_wakeup_at": wakeup}
                result.runnable_again = runnable
            else:
                values, extra = self._finish(conn, row, out, outcome, continue_version)
                dispatches += extra
                result.finished_state = values["state"]
                result.continued_run_id = values.pop("_continued", None)
            out.flush(conn, self)
            conn.execute(
                runs.update()
                .where(runs.c.id == lease.run_id)
                .values(
                    last_seq=out.seq,
                    lease_owner=None,
                    lease_expires_at=None,
                    dispatched_at=None,
                    updated_at=now,
                    **values,
                )
            )
            if outcome is None and not result.runnable_again:
                result.next_wakeup_at = conn.execute(sa.select(runs.c.next_wakeup_at).where(runs.c.id == lease.run_id)).scalar()
            result.last_seq = out.seq
            result.dispatches = dispatches
            return result

    def _earliest_timer(self, run_id: str) -> Any:
        return (
            sa.select(sa.func.min(timers.c.fire_at))
            .where(timers.c.run_id == run_id, timers.c.state == "pending", timers.c.fire_at.is_not(None))
            .scalar_subquery()
        )

    def _has_signal(self, conn: sa.Connection, run_id: str, name: str) -> bool:
        found = conn.execute(
            sa.select(signals.c.id)
            .where(signals.c.run_id == run_id, signals.c.name == name, signals.c.consumed_seq.is_(None))
            .limit(1)
        ).first()
        return found is not None

    def _locked_run(self, conn: sa.Connection, lease: Lease) -> Any:
        row = conn.execute(sa.select(runs).where(runs.c.id == lease.run_id).with_for_update()).first()
        if row is None or row.lease_token != lease.token or row.state != "running":
            raise LeaseLost(
                f"run {lease.run_id}: lease token {lease.token} is stale"
                + ("" if row is None else f" (the run is {row.state} with token {row.lease_token})")
                + "; another worker owns the run, so this write was discarded.",
                run_id=lease.run_id,
                token=lease.token,
            )
        return row

    def _schedule_task(self, conn: sa.Connection, run_id: str, cmd: NewEvent, kind: str) -> Dispatch | None:
        """Insert the task row; None when an idempotency key already holds the result."""
        payload = cmd.payload
        task_id = f"{run_id}:{cmd.command_id}"
        key = payload.get("idempotency_key") if kind == "activity" else None
        stored = None
        if key:
            stored = conn.execute(sa.select(activity_results.c.result).where(activity_results.c.idempotency_key == key)).scalar()
        arguments = {"args": payload.get("args", []), "kwargs": payload.get("kwargs", {})}
        if kind == "compensation":
            arguments["result"] = payload.get("result")
            arguments["for_command"] = payload.get("for_command")
        retry = payload.get("retry") or {"max_attempts": 1}
        now = self._now()
        conn.execute(
            activity_tasks.insert().values(
                id=task_id,
                run_id=run_id,
                command_id=cmd.command_id,
                kind=kind,
                name=cmd.name,
                arguments=dumps(arguments),
                queue=payload.get("queue"),
                state="completed" if stored is not None else "scheduled",
                attempt=1,
                max_attempts=int(retry.get("max_attempts", 1)),
                retry_policy=dumps(retry),
                timeout=payload.get("timeout") or self.activity_timeout,
                idempotency_key=key,
                result=stored,
                dispatched_at=now,
                created_at=now,
                updated_at=now,
                finished_at=now if stored is not None else None,
            )
        )
        if stored is not None:
            return None
        return Dispatch("activity", task_id, queue=payload.get("queue"), attempt=1, label=cmd.name or "")

    def _start_child(self, conn: sa.Connection, child: NewRun) -> None:
        existing = conn.execute(sa.select(runs).where(runs.c.id == child.id)).first()
        if existing is None:
            self._insert_run(conn, child)
        elif existing.parent_run_id != child.parent_run_id:
            raise RunConflict(f"child run id {child.id!r} is already used by another run", run_id=child.id)

    def _finish(
        self, conn: sa.Connection, row: Any, out: _Appender, outcome: Outcome, continue_version: tuple[str, int] | None
    ) -> tuple[dict[str, Any], list[Dispatch]]:
        dispatches: list[Dispatch] = []
        values: dict[str, Any] = {"next_wakeup_at": None}
        if isinstance(outcome, Complete):
            out.add(Kind.RUN_COMPLETED, None, None, {"result": outcome.result})
            values.update(state="completed", result=dumps(outcome.result))
        elif isinstance(outcome, (Fail, Cancelled)):
            cancelled = isinstance(outcome, Cancelled)
            out.add(Kind.RUN_CANCELLED if cancelled else Kind.RUN_FAILED, None, None, {"error": outcome.error})
            values.update(state="cancelled" if cancelled else "failed", error=dumps(outcome.error))
        elif isinstance(outcome, ContinueAsNew):
            assert continue_version is not None
            next_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"continuum:{row.id}:continued"))
            out.add(Kind.RUN_CONTINUED, None, None, {"next_run_id": next_id})
            values.update(state="continued", result=dumps({"continued_to": next_id}), _continued=next_id)
            self._insert_run(
                conn,
                NewRun(
                    id=next_id,
                    workflow=row.workflow,
                    version_hash=continue_version[0],
                    version=continue_version[1],
                    input=outcome.input,
                    parent_run_id=row.parent_run_id,
                    parent_command_id=row.parent_command_id,
                    correlation_id=row.correlation_id,
                    continued_from_run_id=row.id,
                    trace_context=loads(row.trace_context) or {},
                ),
            )
            dispatches.append(Dispatch("replay", next_id, label=row.workflow))
        dispatches += self._cancel_pending(conn, row.id, None)
        if row.parent_run_id and values["state"] != "continued":
            parent = self._poke(conn, row.parent_run_id)
            if parent:
                dispatches.append(parent)
        return values, dispatches

    def _poke(self, conn: sa.Connection, run_id: str) -> Dispatch | None:
        """Note new input for a run; return a dispatch if nobody is about to look at it."""
        row = conn.execute(
            sa.select(runs.c.state, runs.c.dispatched_at, runs.c.stuck_reason, runs.c.workflow)
            .where(runs.c.id == run_id)
            .with_for_update()
        ).first()
        if row is None or row.state in TERMINAL_STATES:
            return None
        values: dict[str, Any] = {"wake_seq": runs.c.wake_seq + 1}
        send = row.state in _RUNNABLE and row.dispatched_at is None and row.stuck_reason is None
        if row.state in _RUNNABLE:
            values["next_wakeup_at"] = self._now()
        if send:
            values["dispatched_at"] = self._now()
        conn.execute(runs.update().where(runs.c.id == run_id).values(**values))
        return Dispatch("replay", run_id, label=row.workflow) if send else None

    def renew(self, lease: Lease, ttl: float) -> None:
        with self._tx() as conn:
            done = conn.execute(
                runs.update()
                .where(runs.c.id == lease.run_id, runs.c.lease_token == lease.token, runs.c.state == "running")
                .values(lease_expires_at=self._after(ttl))
            ).rowcount
        if not done:
            raise LeaseLost(f"run {lease.run_id}: lease token {lease.token} could not be renewed; another worker took over.",
                            run_id=lease.run_id, token=lease.token)

    def release(self, lease: Lease, stuck_reason: str | None = None) -> None:
        with self._tx() as conn:
            self._locked_run(conn, lease)
            values: dict[str, Any] = {"state": "suspended", "lease_owner": None, "lease_expires_at": None, "stuck_reason": stuck_reason}
            if stuck_reason is None:
                values["next_wakeup_at"] = self._now()
            conn.execute(runs.update().where(runs.c.id == lease.run_id).values(**values))

    # ---- activities --------------------------------------------------------------------

    def claim_activity(self, task_id: str, attempt: int, owner: str) -> ActivityClaim | None:
        with self._tx() as conn:
            now = self._now()
            row = conn.execute(
                activity_tasks.update()
                .where(
                    activity_tasks.c.id == task_id,
                    activity_tasks.c.attempt == attempt,
                    activity_tasks.c.state == "scheduled",
                    sa.or_(activity_tasks.c.retry_at.is_(None), activity_tasks.c.retry_at <= now),
                )
                .values(state="running", owner=owner, dispatched_at=None, updated_at=now)
                .returning(*activity_tasks.c)
            ).first()
            if row is None:
                return None
            conn.execute(
                activity_tasks.update()
                .where(activity_tasks.c.id == task_id)
                .values(lease_expires_at=self._after(row.timeout or self.activity_timeout))
            )
        arguments = loads(row.arguments)
        return ActivityClaim(
            task_id=row.id,
            run_id=row.run_id,
            kind=row.kind,
            name=row.name,
            args=arguments.get("args", []),
            kwargs=arguments.get("kwargs", {}),
            attempt=row.attempt,
            max_attempts=row.max_attempts,
            retry_policy=loads(row.retry_policy),
            timeout=row.timeout,
            idempotency_key=row.idempotency_key,
            compensated_result=arguments.get("result"),
        )

    def finish_activity(
        self, claim: ActivityClaim, *, result: Any = None, error: dict[str, Any] | None = None, retryable: bool = True
    ) -> ActivityOutcome:
        with self._tx() as conn:
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
            if error is None:
                conn.execute(
                    activity_tasks.update()
                    .where(activity_tasks.c.id == claim.task_id)
                    .values(state="completed", result=dumps(result), lease_expires_at=None,
                            finished_at=self._now(), updated_at=self._now())
                )
                if claim.idempotency_key:
                    conn.execute(
                        self._insert(activity_results)
                        .values(idempotency_key=claim.idempotency_key, activity=claim.name,
                                result=dumps(result), run_id=claim.run_id, created_at=self._now())
                        .on_conflict_do_nothing()
                    )
                poke = self._poke(conn, claim.run_id)
                return ActivityOutcome("completed", [poke] if poke else [])
            return self._fail_attempt(conn, row, error, retryable)

    def _fail_attempt(self, conn: sa.Connection, row: Any, error: dict[str, Any], retryable: bool) -> ActivityOutcome:
        policy = loads(row.retry_policy)
        if retryable and row.attempt < row.max_attempts:
            delay = min(
                float(policy.get("initial_interval", 1.0)) * float(policy.get("backoff", 2.0)) ** (row.attempt - 1),
                float(policy.get("max_interval", 60.0)),
            )
            due = conn.execute(
                activity_tasks.update()
                .where(activity_tasks.c.id == row.id)
                .values(state="scheduled", attempt=row.attempt + 1, retry_at=self._after(delay), error=dumps(error),
                        lease_expires_at=None, dispatched_at=self._now(), updated_at=self._now())
                .returning(activity_tasks.c.retry_at)
            ).scalar()
            return ActivityOutcome(
                "retry", [Dispatch("activity", row.id, queue=row.queue, attempt=row.attempt + 1, label=row.name, due=due)]
            )
        conn.execute(
            activity_tasks.update()
            .where(activity_tasks.c.id == row.id)
            .values(state="failed", error=dumps(error), lease_expires_at=None, finished_at=self._now(), updated_at=self._now())
        )
        poke = self._poke(conn, row.run_id)
        return ActivityOutcome("failed", [poke] if poke else [])

    # ---- outside input -----------------------------------------------------------------

    def _open_run(self, conn: sa.Connection, run_id: str, action: str) -> Any:
        row = conn.execute(sa.select(runs).where(runs.c.id == run_id).with_for_update()).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}", run_id=run_id)
        if row.state in TERMINAL_STATES:
            raise RunFinished(f"run {run_id} is {row.state}; it cannot {action}.", run_id=run_id, state=row.state)
        return row

    def send_signal(self, run_id: str, name: str, payload: Any) -> list[Dispatch]:
        with self._tx() as conn:
            self._open_run(conn, run_id, f"receive signal {name!r}")
            conn.execute(signals.insert().values(run_id=run_id, name=name, payload=dumps(payload), created_at=self._now()))
            poke = self._poke(conn, run_id)
            return [poke] if poke else []

    def request_cancel(self, run_id: str) -> list[Dispatch]:
        with self._tx() as conn:
            row = conn.execute(sa.select(runs.c.state, runs.c.cancel_requested_at).where(runs.c.id == run_id)).first()
            if row is not None and row.state == "cancelled":
                return []
            row = self._open_run(conn, run_id, "be cancelled")
            if row.cancel_requested_at is not None:
                return []
            conn.execute(runs.update().where(runs.c.id == run_id).values(cancel_requested_at=self._now()))
            poke = self._poke(conn, run_id)
            return [poke] if poke else []

    def request_retry(self, run_id: str, who: str) -> list[Dispatch]:
        with self._tx() as conn:
            row = self._open_run(conn, run_id, "be retried")
            if row.state == "running":
                raise InvalidArgument(f"run {run_id} is running now (lease held by {row.lease_owner}); nothing to retry.")
            conn.execute(
                events.insert().values(
                    run_id=run_id, seq=row.last_seq + 1, kind=Kind.RETRY_REQUESTED.value,
                    payload=dumps({"by": who, "stuck_reason": row.stuck_reason}), created_at=self._now(),
                )
            )
            conn.execute(
                runs.update().where(runs.c.id == run_id).values(
                    last_seq=row.last_seq + 1, stuck_reason=None, next_wakeup_at=self._now(), dispatched_at=self._now()
                )
            )
            return [Dispatch("replay", run_id, label=row.workflow)]

    # ---- sweep -------------------------------------------------------------------------

    def sweep(self, *, batch: int, redispatch_after: float) -> list[Dispatch]:
        dispatches: list[Dispatch] = []
        with self._tx() as conn:
            now = self._now()
            stale = self._after(-redispatch_after)
            not_recent = sa.or_(runs.c.dispatched_at.is_(None), runs.c.dispatched_at < stale)
            due = sa.or_(
                sa.and_(runs.c.state.in_(_RUNNABLE), runs.c.stuck_reason.is_(None), runs.c.next_wakeup_at <= now),
                sa.and_(runs.c.state == "running", runs.c.lease_expires_at < now),
            )
            rows = conn.execute(
                sa.select(runs.c.id, runs.c.workflow).where(due, not_recent)
                .order_by(runs.c.next_wakeup_at).limit(batch).with_for_update(skip_locked=True)
            ).all()
            if rows:
                conn.execute(runs.update().where(runs.c.id.in_([r.id for r in rows])).values(dispatched_at=now))
            dispatches += [Dispatch("replay", r.id, label=r.workflow) for r in rows]
            task_not_recent = sa.or_(activity_tasks.c.dispatched_at.is_(None), activity_tasks.c.dispatched_at < stale)
            tasks = conn.execute(
                sa.select(activity_tasks.c.id, activity_tasks.c.attempt, activity_tasks.c.queue, activity_tasks.c.name)
                .where(
                    activity_tasks.c.state == "scheduled",
                    sa.or_(activity_tasks.c.retry_at.is_(None), activity_tasks.c.retry_at <= now),
                    task_not_recent,
                )
                .limit(batch).with_for_update(skip_locked=True)
            ).all()
            if tasks:
                conn.execute(activity_tasks.update().where(activity_tasks.c.id.in_([t.id for t in tasks])).values(dispatched_at=now))
            dispatches += [Dispatch("activity", t.id, queue=t.queue, attempt=t.attempt, label=t.name) for t in tasks]
            expired = conn.execute(
                sa.select(activity_tasks)
                .where(activity_tasks.c.state == "running", activity_tasks.c.lease_expires_at < now)
                .limit(batch).with_for_update(skip_locked=True)
            ).all()
            for task in expired:
                error = {
                    "type": "ActivityTimeout",
                    "module": "continuum_celery.errors",
                    "message": f"attempt {task.attempt} did not finish within {task.timeout} s "
                    f"(the worker {task.owner} died or the activity overran its timeout)",
                }
                dispatches += self._fail_attempt(conn, task, error, retryable=True).dispatches
        return dispatches

    # ---- versions ----------------------------------------------------------------------

    def upsert_versions(self, hostname: str, versions: Sequence[tuple[str, str, int, str]]) -> None:
        if not versions:
            return
        with self._tx() as conn:
            now = self._now()
            for workflow, version_hash, version, module in versions:
                stmt = self._insert(workflow_versions).values(
                    workflow=workflow, version_hash=version_hash, hostname=hostname, version=version,
                    module=module, first_seen_at=now, last_seen_at=now,
                )
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["workflow", "version_hash", "hostname"],
                        set_={"last_seen_at": now, "version": version, "module": module},
                    )
                )
                conn.execute(
                    runs.update()
                    .where(runs.c.workflow == workflow, runs.c.version_hash == version_hash,
                           runs.c.stuck_reason == "unknown_version")
                    .values(stuck_reason=None, next_wakeup_at=now, dispatched_at=None)
                )

    def list_versions(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(workflow_versions).order_by(workflow_versions.c.workflow, workflow_versions.c.version)).all()
            pinned = dict(
                ((r.workflow, r.version_hash), r.n)
                for r in conn.execute(
                    sa.select(runs.c.workflow, runs.c.version_hash, sa.func.count().label("n"))
                    .where(runs.c.state.not_in(TERMINAL_STATES))
                    .group_by(runs.c.workflow, runs.c.version_hash)
                )
            )
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for r in rows:
            entry = out.setdefault(
                (r.workflow, r.version_hash),
                {"workflow": r.workflow, "version_hash": r.version_hash, "version": r.version, "module": r.module,
                 "hostnames": [], "first_seen_at": r.first_seen_at, "last_seen_at": r.last_seen_at,
                 "pinned_runs": pinned.get((r.workflow, r.version_hash), 0)},
            )
            entry["hostnames"].append(r.hostname)
            entry["first_seen_at"] = min(entry["first_seen_at"], r.first_seen_at)
            entry["last_seen_at"] = max(entry["last_seen_at"], r.last_seen_at)
        for (workflow, version_hash), n in pinned.items():
            out.setdefault(
                (workflow, version_hash),
                {"workflow": workflow, "version_hash": version_hash, "version": None, "module": None, "hostnames": [],
                 "first_seen_at": None, "last_seen_at": None, "pinned_runs": n},
            )
        return list(out.values())


class _Appender:
    """Numbers new events of one run in one transaction and inserts them in one batch."""

    def __init__(self, run_id: str, last_seq: int, now: datetime | None) -> None:
        self.run_id = run_id
        self.seq = last_seq
        self.now = now
        self.start = last_seq
        self.rows: list[dict[str, Any]] = []

    def add(self, kind: Kind, command_id: int | None, name: str | None, payload: dict[str, Any]) -> int:
        self.seq += 1
        self.rows.append(
            {"run_id": self.run_id, "seq": self.seq, "kind": kind.value, "command_id": command_id,
             "name": name, "payload": dumps(payload)}
        )
        return self.seq

    def flush(self, conn: sa.Connection, journal: SQLJournal) -> None:
        if not self.rows:
            return
        now = _utcnow() if journal.is_sqlite else self.now
        if now is None:
            now = conn.execute(sa.select(sa.func.now())).scalar()
        for row in self.rows:
            row["created_at"] = now
        conn.execute(events.insert(), self.rows)
        conn.execute(runs.update().where(runs.c.id == self.run_id).values(last_seq=self.seq))
        self.rows = []
