"""The journal's clock in SQL, and the statements of the per-step path, built once.

SQLAlchemy spends longer building a Core statement and computing its cache key
than PostgreSQL spends running it (about 0.45 ms against 0.15 ms for a one-row
UPDATE here). The statements every step runs are therefore built once per
journal with bound parameters (``p_*``; task and event rows pass their columns
by name), so executing one costs a cache lookup.

The clock is the database's: ``now()`` on PostgreSQL; on SQLite the local
clock as SQLite reads it, in the text form SQLAlchemy stores datetimes in, so
stored and computed times compare as text.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..states import RUNNABLE, TERMINAL
from .run_rules import CHILD_OUTCOMES
from .schema import UTCDateTime, activity_results, activity_tasks, events, runs, signals, snapshots, timers

#: SQLite's clock in SQLAlchemy's stored datetime text (SQLite gives milliseconds; the zeros pad to micro).
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%f"


class Clock:
    """``now`` and ``now + seconds`` as SQL expressions of the journal's database."""

    def __init__(self, is_sqlite: bool) -> None:
        self.is_sqlite = is_sqlite
        sqlite_now = sa.literal_column(f"strftime('{_SQLITE_FORMAT}', 'now') || '000'", UTCDateTime())
        self.now: Any = sqlite_now if is_sqlite else sa.func.now()

    def after(self, seconds: Any) -> Any:
        """``now`` plus ``seconds`` (a number, or a SQL expression of a number: a ``bindparam``, a column)."""
        return self.shift(None, seconds)

    def shift(self, base: Any, seconds: Any) -> Any:
        """``base`` (a time column; None: now) plus ``seconds``."""
        if not isinstance(seconds, sa.ColumnElement):
            seconds = sa.bindparam(None, float(seconds), type_=sa.Float())
        if self.is_sqlite:
            start = "now" if base is None else base
            stamp = sa.func.strftime(_SQLITE_FORMAT, start, sa.func.printf("%+.6f seconds", seconds))
            return sa.type_coerce(stamp.op("||")(sa.literal("000")), UTCDateTime())
        return (sa.func.now() if base is None else base) + sa.literal_column("interval '1 second'") * seconds

    def earliest(self, *times: Any) -> Any:
        """The earliest of non-null times (SQLite's scalar ``min``, PostgreSQL's ``LEAST``)."""
        return (sa.func.min if self.is_sqlite else sa.func.least)(*times)

    def latest(self, *times: Any) -> Any:
        """The latest of non-null times."""
        return (sa.func.max if self.is_sqlite else sa.func.greatest)(*times)

    def attempt_lease(self, timeout: Any, heartbeat_timeout: Any, schedule_to_close: Any, created_at: Any) -> Any:
        """When an attempt claimed now counts as lost: after its timeout, its heartbeat timeout or the end of
        its ``schedule_to_close`` (counted from ``created_at``, never before now), whichever comes first.

        Every argument is a SQL expression (columns of the task row, or parameters), so a claim sets its
        lease in the statement that claims it.
        """
        limit = self.after(timeout)
        beat = sa.case((heartbeat_timeout > 0, self.after(heartbeat_timeout)), else_=limit)
        close = sa.case(
            (schedule_to_close > 0, self.latest(self.shift(created_at, schedule_to_close), self.now)), else_=limit
        )
        return sa.type_coerce(self.earliest(limit, beat, close), UTCDateTime())


def _p(name: str, type_: Any = None) -> Any:
    return sa.bindparam(f"p_{name}", type_=type_)


#: Execution option of a write whose result nobody reads: on PostgreSQL it waits in the transaction's
#: pipeline and travels with the next statement that returns something, or with the COMMIT.
PIPELINED = "continuum_pipelined"


def _pipelined(statement: Any) -> Any:
    """Mark a write that reads nothing back (no rows, no rowcount) as free to be pipelined."""
    return statement.execution_options(**{PIPELINED: True})


def _run_columns(*columns: sa.Column[Any]) -> list[Any]:
    """The owning run's ``columns`` as scalar subqueries, labelled ``run_<name>``, for a task's RETURNING."""
    return [
        sa.select(c).where(runs.c.id == activity_tasks.c.run_id).scalar_subquery().label(f"run_{c.name}")
        for c in columns
    ]


def _poke(which: Any, now: Any) -> Any:
    """New input for the runs ``which`` selects: count it (a step in flight then steps again), and make each
    run due unless it is already (moved to this transaction's now(), a due time could turn later than the
    now() of a claim waiting on the row lock, which would then fail). ``sent``: this poke marked the run
    dispatched, so the caller sends its replay (a duplicate is harmless: the claim is a compare-and-swap).
    """
    runnable = runs.c.state.in_(RUNNABLE)
    return (
        runs.update()
        .where(which, runs.c.state.not_in(TERMINAL))
        .values(
            wake_seq=runs.c.wake_seq + 1,
            next_wakeup_at=sa.case(
                (sa.and_(runnable, sa.or_(runs.c.next_wakeup_at.is_(None), runs.c.next_wakeup_at > now)), now),
                else_=runs.c.next_wakeup_at,
            ),
            dispatched_at=sa.case(
                (sa.and_(runnable, runs.c.dispatched_at.is_(None), runs.c.stuck_reason.is_(None)), now),
                else_=runs.c.dispatched_at,
            ),
        )
        .returning(runs.c.id, runs.c.workflow, runs.c.version_hash, (runs.c.dispatched_at == now).label("sent"))
    )


class StepStatements:
    """Prebuilt statements of claiming, resolving and committing a step (see the module docstring)."""

    def __init__(self, clock: Clock) -> None:
        now, run_id = clock.now, _p("run")
        claimable = sa.or_(
            sa.and_(
                runs.c.state.in_(RUNNABLE),
                runs.c.stuck_reason.is_(None),
                runs.c.next_wakeup_at <= now,
            ),
            sa.and_(runs.c.state == "running", runs.c.lease_expires_at < now),
        )
        # What the claimed run has to resolve, read in the claim itself, so a step only queries what is there.
        # The claimed row's columns are spelled out: SQLite's UPDATE leaves column names unqualified, and
        # inside these subqueries a bare ``id`` would name the inner table's.
        claimed_id: Any = sa.literal_column(f"{runs.name}.id")
        claimed_token: Any = sa.literal_column(f"{runs.name}.lease_token")  # RETURNING sees the new token
        child = runs.alias("child")
        pending = {
            "orphans": sa.exists().where(
                activity_tasks.c.run_id == claimed_id,
                activity_tasks.c.state == "running",
                activity_tasks.c.run_lease_token < claimed_token,
            ),
            "finished": sa.exists().where(
                activity_tasks.c.run_id == claimed_id,
                activity_tasks.c.state.in_(("completed", "failed")),
                activity_tasks.c.outcome_seq.is_(None),
            ),
            "waits": sa.exists().where(timers.c.run_id == claimed_id, timers.c.state == "pending"),
            "children": sa.exists().where(
                child.c.parent_run_id == claimed_id,
                child.c.state.in_(tuple(CHILD_OUTCOMES)),
                child.c.reported_to_parent.is_(False),
            ),
        }
        self.claim_run = (
            runs.update()
            .where(runs.c.id == run_id, claimable)
            .values(
                state="running",
                lease_token=runs.c.lease_token + 1,
                lease_owner=_p("owner"),
                lease_expires_at=clock.after(_p("ttl", sa.Float())),
                dispatched_at=None,
                updated_at=now,
            )
            .returning(*runs.c, now.label("db_now"), *(flag.label(f"has_{name}") for name, flag in pending.items()))
        )
        self.run_by_id = sa.select(runs).where(runs.c.id == run_id)
        # What a commit reads of the run it holds (fewer columns: less to describe and decode per step).
        held = (
            runs.c.id,
            runs.c.workflow,
            runs.c.state,
            runs.c.lease_token,
            runs.c.wake_seq,
            runs.c.last_seq,
            runs.c.cancel_requested_at,
            runs.c.trace_context,
            runs.c.correlation_id,
            runs.c.parent_run_id,
            runs.c.parent_command_id,
        )
        self.lock_run = sa.select(*held).where(runs.c.id == run_id).with_for_update()
        # A commit's first statement: lock the run, check the caller's token, and move last_seq past the
        # events the commit appends (their number is known up front). When the lease is kept it is also
        # the run row's only write; it leaves indexed columns alone, so the update stays in place (HOT).
        self.take_run = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.lease_token == _p("token"), runs.c.state == "running")
            .values(last_seq=runs.c.last_seq + _p("appended"), dispatched_at=None, updated_at=now)
            .returning(*held, now.label("db_now"))
        )
        # Number the run's finished, unrecorded tasks in the order they ended, from ``p_base + 1``: the seqs
        # of their outcome events, set and returned in one statement.
        ranked = (
            sa.select(
                activity_tasks.c.id,
                sa.func.row_number().over(order_by=(activity_tasks.c.finished_at, activity_tasks.c.id)).label("n"),
            )
            .where(
                activity_tasks.c.run_id == run_id,
                activity_tasks.c.state.in_(("completed", "failed")),
                activity_tasks.c.outcome_seq.is_(None),
            )
            .subquery("ranked")
        )
        self.record_finished = (
            activity_tasks.update()
            .where(activity_tasks.c.id == ranked.c.id)
            .values(outcome_seq=_p("base", sa.Integer()) + ranked.c.n)
            .returning(*activity_tasks.c)
        )
        # Inline attempts of an earlier lease on the run: their replay task is gone (see _resolve).
        self.orphaned_attempts = (
            sa.select(activity_tasks)
            .where(
                activity_tasks.c.run_id == run_id,
                activity_tasks.c.state == "running",
                activity_tasks.c.run_lease_token < _p("token"),
            )
            .with_for_update(skip_locked=True)
        )
        self.task_outcome_seq = _pipelined(
            activity_tasks.update().where(activity_tasks.c.id == _p("task")).values(outcome_seq=_p("seq"))
        )
        self.insert_timers = _pipelined(timers.insert().values(created_at=now))
        self.consume_signal = _pipelined(
            signals.update().where(signals.c.id == _p("signal")).values(consumed_seq=_p("seq"))
        )
        self.pending_timers = (
            sa.select(timers)
            .where(timers.c.run_id == run_id, timers.c.state == "pending")
            .order_by(timers.c.command_id)
        )
        self.unreported_children = (
            sa.select(
                runs.c.id,
                runs.c.state,
                runs.c.result,
                runs.c.error,
                runs.c.parent_command_id,
                runs.c.workflow,
            )
            .where(
                runs.c.parent_run_id == run_id,
                runs.c.state.in_(tuple(CHILD_OUTCOMES)),
                runs.c.reported_to_parent.is_(False),
            )
            .order_by(runs.c.updated_at, runs.c.id)
        )
        self.latest_snapshot = (
            sa.select(snapshots.c.state).where(snapshots.c.run_id == run_id).order_by(snapshots.c.seq.desc()).limit(1)
        )
        self.parent_of = sa.select(runs.c.parent_run_id).where(runs.c.id == run_id)
        self.lock_parent = sa.select(runs.c.id).where(runs.c.id == _p("parent")).with_for_update()
        self.cancel_timers = _pipelined(
            timers.update().where(timers.c.run_id == run_id, timers.c.state == "pending").values(state="cancelled")
        )
        self.cancel_unstarted = (
            activity_tasks.update()
            .where(
                activity_tasks.c.run_id == run_id,
                activity_tasks.c.state == "scheduled",
                activity_tasks.c.kind.in_(sa.bindparam("p_kinds", expanding=True)),
            )
            .values(state="cancelled", updated_at=now, finished_at=now)
            .returning(
                activity_tasks.c.id,
                activity_tasks.c.command_id,
                activity_tasks.c.name,
                activity_tasks.c.kind,
                activity_tasks.c.attempt,
            )
        )
        tasks = activity_tasks.c
        self.claim_task = (
            activity_tasks.update()
            .where(
                tasks.id == _p("task"),
                tasks.attempt == _p("attempt"),
                tasks.state == "scheduled",
                sa.or_(tasks.retry_at.is_(None), tasks.retry_at <= now),
                # A cancel the run has not seen yet holds its activities back (compensations still run);
                # the run's next step then drops them.
                sa.or_(
                    tasks.kind != "activity",
                    ~sa.exists().where(
                        runs.c.id == tasks.run_id,
                        runs.c.cancel_requested_at.is_not(None),
                        runs.c.cancel_journaled.is_(False),
                    ),
                ),
            )
            .values(
                state="running",
                owner=_p("owner"),
                dispatched_at=None,
                started_at=now,
                updated_at=now,
                lease_expires_at=clock.attempt_lease(
                    sa.func.coalesce(tasks.timeout, _p("default_timeout", sa.Float())),
                    tasks.heartbeat_timeout,
                    tasks.schedule_to_close,
                    tasks.created_at,
                ),
            )
            .returning(*activity_tasks.c, *_run_columns(runs.c.workflow, runs.c.trace_context))
        )
        # The end of a successful attempt (``p_seq``: the outcome's event when the run records it at once).
        self.complete_attempt = (
            activity_tasks.update()
            .where(tasks.id == _p("task"), tasks.attempt == _p("attempt"), tasks.state == "running")
            .values(
                state="completed",
                result=_p("result"),
                lease_expires_at=None,
                outcome_seq=_p("seq", sa.Integer()),
                finished_at=now,
                updated_at=now,
            )
        )
        self.poke = _poke(runs.c.id == run_id, now)
        # PostgreSQL completes an attempt and wakes its run in one statement (SQLite: the two above, in turn).
        # No row: the attempt was not this caller's to finish; ``workflow`` NULL: its run has ended.
        self.complete_and_poke: Any = None
        if not clock.is_sqlite:
            done = self.complete_attempt.returning(tasks.run_id).cte("done")
            poked = _poke(runs.c.id.in_(sa.select(done.c.run_id)), now).cte("poked")
            woken = (done.c.run_id, poked.c.workflow, poked.c.version_hash, poked.c.sent)
            self.complete_and_poke = sa.select(*woken).select_from(done.outerjoin(poked, sa.true()))
        self.heartbeat_lease = (
            activity_tasks.update()
            .where(activity_tasks.c.id == _p("task"))
            .values(lease_expires_at=clock.after(_p("lease", sa.Float())))
        )
        self.abandon_running = _pipelined(
            activity_tasks.update()
            .where(activity_tasks.c.run_id == run_id, activity_tasks.c.state == "running")
            .values(state="cancelled", lease_expires_at=None, updated_at=now, finished_at=now)
        )
        self.live_children = sa.select(runs.c.id).where(
            runs.c.parent_run_id.in_(sa.bindparam("p_parents", expanding=True)),
            runs.c.state.not_in(TERMINAL),
        )
        self.drop_snapshots = _pipelined(snapshots.delete().where(snapshots.c.run_id == run_id))
        self.events_after = (
            sa.select(events).where(events.c.run_id == run_id, events.c.seq > _p("after")).order_by(events.c.seq)
        )
        self.insert_events = _pipelined(events.insert().values(created_at=now))
        self.set_last_seq = _pipelined(runs.update().where(runs.c.id == run_id).values(last_seq=_p("seq")))
        # No row back: a run with that id exists already (a concurrent start of the same id waits for the
        # first one's commit, then finds it).
        self.insert_run = (
            (sqlite.insert if clock.is_sqlite else postgresql.insert)(runs)
            .values(next_wakeup_at=now, dispatched_at=now, created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=[runs.c.id])
            .returning(*runs.c)
        )
        self.stored_result = sa.select(activity_results.c.result).where(activity_results.c.idempotency_key == _p("key"))
        # Task rows pass their columns by name; the times are the database's.
        self.insert_task = _pipelined(activity_tasks.insert().values(dispatched_at=now, created_at=now, updated_at=now))
        self.insert_running_task = _pipelined(activity_tasks.insert()).values(
            dispatched_at=None,
            started_at=now,
            lease_expires_at=clock.attempt_lease(
                _p("timeout", sa.Float()), _p("heartbeat", sa.Float()), _p("close", sa.Float()), now
            ),
            created_at=now,
            updated_at=now,
        )
        ended = runs.update().where(runs.c.id == run_id).returning(now.label("db_now"), runs.c.next_wakeup_at)
        earliest_timer = (
            sa.select(sa.func.min(timers.c.fire_at))
            .where(timers.c.run_id == run_id, timers.c.state == "pending", timers.c.fire_at.is_not(None))
            .scalar_subquery()
        )
        suspended = {
            "state": "suspended",
            "lease_owner": None,
            "lease_expires_at": None,
            "last_seq": _p("seq"),
            "dispatched_at": None,
            "updated_at": now,
        }
        self.suspend_runnable = ended.values(next_wakeup_at=now, **suspended)
        self.suspend_until_timer = ended.values(next_wakeup_at=earliest_timer, **suspended)
        # ``take_run`` and the suspend in one statement, for a step that gives the run back and adds no wait
        # (so the run's earliest timer is known before the step's rows are written): due at once when input
        # arrived since the claim (``p_seen``: the claim's wake_seq), else at its earliest timer.
        due = sa.case((runs.c.wake_seq != _p("seen", sa.BigInteger()), now), else_=earliest_timer)
        self.take_and_suspend = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.lease_token == _p("token"), runs.c.state == "running")
            .values(
                {
                    **suspended,
                    "last_seq": runs.c.last_seq + _p("appended"),
                    "next_wakeup_at": due,
                }
            )
            .returning(*held, now.label("db_now"), runs.c.next_wakeup_at)
        )
