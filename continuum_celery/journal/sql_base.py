"""Shared plumbing of the SQL journal: transactions, dialect hooks, row mapping, and the writes
every part needs (insert a run, lock a run by its lease, wake a run). Engines: ``sql_engine``.

Time is the database's (``now()``) on PostgreSQL, so worker clocks never decide
a lease; SQLite, a single-machine default, uses the local clock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..config import DEFAULT_SNAPSHOT_EVERY
from ..errors import (
    JournalError,
    LeaseLost,
    RunFinished,
    RunNotFound,
)
from ..events import Event, Kind
from ..serialization import dumps, loads
from ..states import TERMINAL
from .records import ActivityClaim, Dispatch, Lease, NewRun, RunRecord
from .run_rules import DEADLINE_COMMAND, lease_lost, started_payload
from .schema import (
    check_schema,
    runs,
)
from .sql_clock import Clock
from .sql_engine import PIPELINE_KEY, make_engine, read_only_engine
from .sql_errors import database_errors, escaped_error, translate_errors
from .sql_statements import PIPELINED, StepStatements
from .task_rules import close_in

_QUEUED = {PIPELINED: True}


def woken_run(row: Any, run_id: str) -> Dispatch | None:
    """The replay to send for a poke's row (workflow, version_hash, sent), if the poke marked it dispatched."""
    if row is None or not row.sent:
        return None
    return Dispatch("replay", run_id, label=row.workflow, version_hash=row.version_hash)


def run_record(row: Any) -> RunRecord:
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


def event_from_row(row: Any) -> Event:
    return Event(
        seq=row.seq,
        kind=Kind(row.kind),
        command_id=row.command_id,
        name=row.name,
        payload=loads(row.payload),
    )


class SQLBase:
    """Engine, dialect hooks and shared writes; the mixins in sql_*.py build on it."""

    def __init__(
        self,
        url: str,
        *,
        activity_timeout: float = 300.0,
        check: bool = True,
        queue: str | None = None,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        read_only: bool = False,
    ) -> None:
        # Read-only: every write fails, and a missing SQLite file is an error rather than created.
        with database_errors(url):
            self.engine = read_only_engine(url) if read_only else make_engine(url)
        translate_errors(self.engine)  # no SQLAlchemy or driver error leaves the adapter
        self.snapshot_every = snapshot_every
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.clock = Clock(self.is_sqlite)
        self.sql = StepStatements(self.clock)
        self._held = threading.local()  # the connection a thread's step loop holds (holding_connection)
        self.activity_timeout = activity_timeout
        self.queue = queue
        if check:
            try:
                check_schema(self.engine)
            except Exception:
                self.engine.dispose()  # the caller never gets this journal to close
                raise

    def _insert(self, table: sa.Table) -> Any:
        return (sqlite.insert if self.is_sqlite else postgresql.insert)(table)

    @contextmanager
    def holding_connection(self) -> Iterator[None]:
        if getattr(self._held, "conn", None) is not None:  # nested: the outer block holds one already
            yield
            return
        with self.engine.connect() as conn:
            self._held.conn = conn
            try:
                yield
            finally:
                self._held.conn = None

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        held: sa.Connection | None = getattr(self._held, "conn", None)
        try:
            if self.is_sqlite:
                with contextlib.ExitStack() as stack:
                    conn = held if held is not None else stack.enter_context(self.engine.connect())
                    with conn.begin():
                        yield conn
            elif held is None:
                with self.engine.connect() as conn, self._pipelined_transaction(conn):
                    yield conn
            else:
                with self._pipelined_transaction(held):
                    yield held
        except sa.exc.IntegrityError as exc:
            raise JournalError(f"the journal refused a write: {exc.orig}") from exc

    @contextmanager
    def _pipelined_transaction(self, conn: sa.Connection) -> Iterator[None]:
        """A PostgreSQL transaction in psycopg's pipeline mode: its BEGIN travels with its first statement,
        and the writes marked ``PIPELINED`` travel with the next statement that needs an answer, or with the
        COMMIT. The connection is in autocommit meanwhile, so that the BEGIN and COMMIT are statements of
        the pipeline (psycopg's own BEGIN would wait for its answer)."""
        conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            with conn.begin():  # SQLAlchemy's bookkeeping; on an error its rollback ends the server's transaction
                try:
                    with conn.connection.driver_connection.pipeline() as pipeline:  # type: ignore[union-attr]
                        conn.info[PIPELINE_KEY] = pipeline
                        try:
                            conn.exec_driver_sql("BEGIN", execution_options=_QUEUED)
                            yield
                            conn.exec_driver_sql("COMMIT", execution_options=_QUEUED)
                        finally:
                            if not conn.invalidated:  # a lost connection's info goes with it, on reconnect
                                del conn.info[PIPELINE_KEY]
                except psycopg.Error as exc:  # raised by the pipeline's last sync: a queued write, or the COMMIT
                    raise escaped_error(exc, self.engine, "COMMIT") from exc
        finally:
            if not conn.invalidated:  # touching a lost connection would mask its error with PendingRollbackError
                conn.execution_options(isolation_level=self.engine.dialect.default_isolation_level)

    @contextmanager
    def _single(self) -> Iterator[sa.Connection]:
        """A connection for one statement that commits by itself.

        On PostgreSQL it runs in autocommit: no BEGIN and COMMIT round trips around it. SQLite has
        no round trips to save, and keeps its immediate-lock transaction.
        """
        if self.is_sqlite:
            with self._tx() as conn:
                yield conn
            return
        held: sa.Connection | None = getattr(self._held, "conn", None)
        if held is None:
            with self.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
                conn.commit()
            return
        held.execution_options(isolation_level="AUTOCOMMIT")
        try:
            yield held
            held.commit()  # ends SQLAlchemy's bookkeeping only: in autocommit nothing is pending
        except BaseException:
            held.rollback()
            raise
        finally:
            held.execution_options(isolation_level=self.engine.dialect.default_isolation_level)

    def close(self) -> None:
        self.engine.dispose()

    def _insert_run(self, conn: sa.Connection, run: NewRun) -> Any:
        """Insert a pending run and its ``run_started`` event; return the run's row, or None when a run
        with its id exists already (nothing is written then)."""
        row = conn.execute(
            self.sql.insert_run,
            {
                "id": run.id,
                "workflow": run.workflow,
                "version_hash": run.version_hash,
                "version": run.version,
                "state": "pending",
                "input": dumps(run.input),
                "last_seq": 1,
                "parent_run_id": run.parent_run_id,
                "parent_command_id": run.parent_command_id,
                "correlation_id": run.correlation_id or run.id,
                "continued_from_run_id": run.continued_from_run_id,
                "trace_context": dumps(run.trace_context) if run.trace_context else None,
            },
        ).first()
        if row is None:
            return None
        started = Appender(run.id, 0, None)
        started.add(Kind.RUN_STARTED, None, None, started_payload(run))
        started.flush(conn, self, set_last_seq=False)
        if run.timeout:
            deadline = {"run_id": run.id, "command_id": DEADLINE_COMMAND, "kind": "deadline", "state": "pending"}
            conn.execute(self.sql.insert_timers.values(fire_at=self.clock.after(run.timeout)), [deadline])
        return row

    def _poke(self, conn: sa.Connection, run_id: str) -> Dispatch | None:
        """Note new input for a run; return a dispatch if nobody is about to look at it."""
        return woken_run(conn.execute(self.sql.poke, {"p_run": run_id}).first(), run_id)

    def _cancel_descendants(self, conn: sa.Connection, run_id: str) -> list[Dispatch]:
        """Ask every live descendant of ``run_id`` (children, their children...) to stop, and wake each.

        Done in the transaction that cancels ``run_id``, so no activity of the tree can be
        claimed after the cancel, even before each run's own step has seen it.
        """
        dispatches: list[Dispatch] = []
        level = [run_id]
        while level:
            level = list(conn.execute(self.sql.live_children, {"p_parents": level}).scalars().all())
            if not level:
                break
            conn.execute(
                runs.update()
                .where(runs.c.id.in_(level), runs.c.cancel_requested_at.is_(None))
                .values(cancel_requested_at=self.clock.now)
            )
            dispatches += [d for d in (self._poke(conn, child_id) for child_id in level) if d is not None]
        return dispatches

    def _locked_run(self, conn: sa.Connection, lease: Lease) -> Any:
        row = conn.execute(self.sql.lock_run, {"p_run": lease.run_id}).first()
        if row is None or row.lease_token != lease.token or row.state != "running":
            raise lease_lost(lease, None if row is None else row.state, None if row is None else row.lease_token)
        return row

    def _lease_lost(self, conn: sa.Connection, lease: Lease) -> LeaseLost:
        """The LeaseLost for a write under ``lease``, naming what holds the run now."""
        row = conn.execute(self.sql.run_by_id, {"p_run": lease.run_id}).first()
        return lease_lost(lease, None if row is None else row.state, None if row is None else row.lease_token)

    def _open_run(self, conn: sa.Connection, run_id: str, action: str) -> Any:
        row = conn.execute(sa.select(runs).where(runs.c.id == run_id).with_for_update()).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}", run_id=run_id)
        if row.state in TERMINAL:
            raise RunFinished(f"run {run_id} is {row.state}; it cannot {action}.", run_id=run_id, state=row.state)
        return row

    def _events_after(self, conn: sa.Connection, run_id: str, after_seq: int) -> list[Event]:
        rows = conn.execute(self.sql.events_after, {"p_run": run_id, "p_after": after_seq})
        return [event_from_row(r) for r in rows]

    def _claim_task(self, conn: sa.Connection, task_id: str, attempt: int, owner: str) -> ActivityClaim | None:
        """Start an attempt (one statement: the claim sets its lease); None when it is not claimable now."""
        params = {"p_task": task_id, "p_attempt": attempt, "p_owner": owner, "p_default_timeout": self.activity_timeout}
        row = conn.execute(self.sql.claim_task, params).first()
        if row is None:
            return None
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
            workflow=row.run_workflow or "",
            trace_context=loads(row.run_trace_context) or {},
            heartbeat_timeout=row.heartbeat_timeout,
            last_heartbeat=loads(row.heartbeat_details),
            schedule_to_close=row.schedule_to_close,
            close_in=close_in(row.created_at, row.schedule_to_close, datetime.now(timezone.utc)),
        )


class Appender:
    """Numbers new events of one run in one transaction and inserts them in one batch."""

    def __init__(self, run_id: str, last_seq: int, now: datetime | None) -> None:
        self.run_id = run_id
        self.seq = last_seq
        self.now = now
        self.start = last_seq
        self.rows: list[dict[str, Any]] = []
        #: Every event added, flushed or not: what a reader that had the run up to ``last_seq`` lacks.
        self.added: list[Event] = []

    def add(self, kind: Kind, command_id: int | None, name: str | None, payload: dict[str, Any]) -> int:
        self.seq += 1
        self.added.append(Event(self.seq, kind, command_id, name, payload))
        self.rows.append(
            {
                "run_id": self.run_id,
                "seq": self.seq,
                "kind": kind.value,
                "command_id": command_id,
                "name": name,
                "payload": dumps(payload),
            }
        )
        return self.seq

    def flush(self, conn: sa.Connection, journal: SQLBase, *, set_last_seq: bool = True) -> None:
        """Insert the events (stamped with the journal's clock); ``set_last_seq=False`` when the caller
        updates the run row itself in the same transaction."""
        if not self.rows:
            return
        conn.execute(journal.sql.insert_events, self.rows)
        if set_last_seq:
            conn.execute(journal.sql.set_last_seq, {"p_run": self.run_id, "p_seq": self.seq})
        self.rows = []
