"""``continuum doctor``: why each unfinished run is not progressing.

Every reason is derived from the journal's rows (runs, timers, activity tasks,
signals, workflow versions). Whether a lease holder is alive comes from Celery:
one ``inspect ping`` (and ``stats`` for the nodes that answer, to check the
process id). With no reachable broker, liveness is reported as unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kombu.utils.url import maybe_sanitize_url

from .cli_format import jsonable, when
from .inspection import PendingWork, open_run_ids, pending_work
from .journal.sql import SQLJournal
from .serialization import loads

log = logging.getLogger(__name__)

#: Seconds ``inspect ping`` waits for workers to answer.
PING_TIMEOUT = 1.0

ALIVE, DEAD, UNKNOWN = "alive", "dead", "unknown"


@dataclass(frozen=True)
class Reason:
    """One thing a run waits on.

    Attributes:
        kind: ``timer``, ``signal``, ``activity``, ``child``, ``lease``, ``runnable``, ``cancel``,
            ``unknown_version``, ``nondeterminism`` or ``idle``.
        message: one line for a human.
        attention: True when the run will not move without someone acting (or a takeover).
        details: the same facts for scripts.
    """

    kind: str
    message: str
    attention: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Diagnosis:
    """Why one run is where it is."""

    run_id: str
    workflow: str
    state: str
    reasons: list[Reason]

    @property
    def attention(self) -> bool:
        """Whether any reason needs an operator (or a takeover that has not happened yet)."""
        return any(r.attention for r in self.reasons)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO strings)."""
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "state": self.state,
            "attention": self.attention,
            "reasons": [jsonable(r) for r in self.reasons],
        }


def broker_error(app: Any, timeout: float = 2.0) -> str | None:
    """Why ``app``'s broker cannot be reached now, or None when it can (one quick attempt, no retries)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=timeout)
    except Exception as exc:
        return f"cannot reach the broker {maybe_sanitize_url(app.conf.broker_url or 'amqp://')}: {exc}"
    return None


class WorkerProbe:
    """Answers "is the process holding this lease alive?" with one ping per doctor run.

    Args:
        app: the Celery app whose broker reaches the workers; None means liveness is unknown.
        timeout: seconds to wait for replies.
    """

    def __init__(self, app: Any | None, timeout: float = PING_TIMEOUT) -> None:
        self._app: Any = app
        self._timeout = timeout
        self._nodes: dict[str, set[int]] | None = None
        self.error: str | None = None if app is not None else "no Celery app to ask"

    def _load(self) -> dict[str, set[int]] | None:
        if self._nodes is None and self.error is None:
            self.error = broker_error(self._app)
            if self.error is not None:
                return None
            try:
                inspect = self._app.control.inspect(timeout=self._timeout)
                replies = inspect.ping() or {}
                stats = (
                    self._app.control.inspect(destination=list(replies), timeout=self._timeout).stats() or {}
                    if replies
                    else {}
                )
            except Exception as exc:  # an unreachable broker: say so, do not guess
                self.error = f"cannot ask the workers: {type(exc).__name__}: {exc}"
                return None
            self._nodes = {node: _pids(stats.get(node)) for node in replies}
        return self._nodes

    def status(self, owner: str | None) -> str:
        """``alive``, ``dead`` or ``unknown`` for a lease owner ``node:pid``."""
        if not owner:
            return UNKNOWN
        nodes = self._load()
        if nodes is None:
            return UNKNOWN
        node, _, pid = owner.rpartition(":")
        if node not in nodes:
            return DEAD
        pids = nodes[node]
        return ALIVE if not pids or not pid.isdigit() or int(pid) in pids else DEAD


def _pids(stats: Any) -> set[int]:
    """The main and pool process ids a worker reports in ``inspect stats``."""
    if not isinstance(stats, dict):
        return set()
    pids = {stats["pid"]} if isinstance(stats.get("pid"), int) else set()
    processes = (stats.get("pool") or {}).get("processes") or []
    return pids | {p for p in processes if isinstance(p, int)}


def _holder(owner: str | None, probe: WorkerProbe) -> tuple[str, str]:
    status = probe.status(owner)
    words = {ALIVE: "alive", DEAD: "NOT alive (no reply from that worker process)", UNKNOWN: "liveness unknown"}
    return status, f"{owner or '?'} ({words[status]})"


def diagnose(work: PendingWork, probe: WorkerProbe) -> Diagnosis:
    """Every reason ``work.run`` is not progressing, most pressing first."""
    run, row, now = work.run, work.row, work.now
    reasons: list[Reason] = []
    if run.stuck_reason == "unknown_version":
        hosts = ", ".join(work.version_hosts) or "none recorded"
        reasons.append(
            Reason(
                "unknown_version",
                f"stuck: the workers that took it lack {run.workflow} version {run.version} "
                f"(hash {run.version_hash}); workers that loaded it: {hosts}. Start a worker with that code; "
                "the run resumes when it boots (or `continuum retry` after deploying).",
                attention=True,
                details={"version_hash": run.version_hash, "version": run.version, "hosts": work.version_hosts},
            )
        )
    elif run.stuck_reason == "nondeterminism":
        reasons.append(
            Reason(
                "nondeterminism",
                "stuck: replaying the workflow code did not reproduce this run's history (nondeterminism). "
                "Deploy code that does (guard changes with ctx.patched), then `continuum retry "
                f"{run.id}`.",
                attention=True,
            )
        )
    elif run.stuck_reason:
        reasons.append(Reason(run.stuck_reason, f"stuck: {run.stuck_reason}", attention=True))
    if run.state == "running":
        reasons.append(_lease_reason(run.lease_owner, run.lease_expires_at, now, probe))
    elif not run.stuck_reason and run.next_wakeup_at is not None and run.next_wakeup_at <= now:
        sent = f"last dispatched {when(row.dispatched_at, now)}" if row.dispatched_at else "not dispatched yet"
        reasons.append(
            Reason(
                "runnable",
                f"runnable since {when(run.next_wakeup_at, now)}: waiting for a worker to take a step ({sent}; "
                "the beat sweep re-dispatches it if the message was lost).",
                details={"since": run.next_wakeup_at, "dispatched_at": row.dispatched_at},
            )
        )
    if row.cancel_requested_at is not None and not row.cancel_journaled:
        reasons.append(
            Reason("cancel", f"cancel requested {when(row.cancel_requested_at, now)}; the next step applies it.")
        )
    reasons += [_timer_reason(t, work.inbox, now) for t in work.timers]
    reasons += [_task_reason(t, now, probe) for t in work.tasks]
    reasons += [_child_reason(c) for c in work.children]
    if not reasons:
        reasons.append(
            Reason(
                "idle",
                "suspended with nothing pending: no timer, activity, child or signal wait, and no wake-up "
                "(it resumes on new input such as a signal or a cancel).",
            )
        )
    return Diagnosis(run.id, run.workflow, run.state, reasons)


def _lease_reason(owner: str | None, expires: datetime | None, now: datetime, probe: WorkerProbe) -> Reason:
    status, holder = _holder(owner, probe)
    details = {"owner": owner, "expires_at": expires, "owner_status": status}
    if expires is not None and expires < now:
        return Reason(
            "lease",
            f"a step was taken by {holder} and its lease expired {when(expires, now)}; "
            "the next sweep hands the run to another worker.",
            attention=True,
            details=details,
        )
    return Reason(
        "lease",
        f"a replay step is running on {holder}; lease until {when(expires, now)}"
        + ("; then the sweep hands the run to another worker." if status == DEAD else "."),
        attention=status == DEAD,
        details=details,
    )


def _timer_reason(timer: Any, inbox: list[str], now: datetime) -> Reason:
    if timer.kind == "signal":
        details = {"signal": timer.name, "timeout_at": timer.fire_at, "command_id": timer.command_id}
        if timer.name in inbox:
            return Reason(
                "signal",
                f"signal {timer.name!r} arrived; the next step delivers it.",
                details={**details, "arrived": True},
            )
        limit = f"times out {when(timer.fire_at, now)}" if timer.fire_at else "no timeout"
        return Reason("signal", f"waiting on signal {timer.name!r} ({limit}).", details=details)
    due = timer.fire_at is not None and timer.fire_at <= now
    message = f"waiting on a timer until {when(timer.fire_at, now)}" + (
        "; it is due, the next wake-up or sweep fires it." if due else "."
    )
    return Reason("timer", message, details={"fire_at": timer.fire_at, "command_id": timer.command_id})


def _task_reason(task: Any, now: datetime, probe: WorkerProbe) -> Reason:
    label = "compensation" if task.kind == "compensation" else "activity"
    head = f"{label} {task.name} attempt {task.attempt} of {task.max_attempts}"
    details: dict[str, Any] = {
        "activity": task.name,
        "task_id": task.id,
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "state": task.state,
    }
    if task.state in ("completed", "failed"):
        return Reason("activity", f"{head} {task.state}; the next step records it.", details=details)
    if task.state == "running":
        status, holder = _holder(task.owner, probe)
        expired = task.lease_expires_at is not None and task.lease_expires_at < now
        tail = (
            f"its time ran out {when(task.lease_expires_at, now)}; the next sweep fails this attempt"
            if expired
            else f"times out {when(task.lease_expires_at, now)}"
        )
        details.update(owner=task.owner, owner_status=status, expires_at=task.lease_expires_at)
        return Reason("activity", f"{head}: running on {holder}; {tail}.", attention=status == DEAD, details=details)
    error = loads(task.error) if task.error else None
    if task.retry_at is not None and task.retry_at > now:
        why = f" after {error.get('type')}: {error.get('message')}" if isinstance(error, dict) else ""
        details.update(retry_at=task.retry_at, last_error=error)
        return Reason(
            "activity",
            f"{head}: retry at {when(task.retry_at, now)}{why} (`continuum retry` runs it now).",
            details=details,
        )
    queue = task.queue or "the default queue"
    details.update(queue=task.queue, dispatched_at=task.dispatched_at)
    return Reason(
        "activity",
        f"{head}: queued on {queue} (dispatched {when(task.dispatched_at, now)}), waiting for a worker.",
        details=details,
    )


def _child_reason(child: Any) -> Reason:
    details = {"child_run_id": child.id, "workflow": child.workflow, "child_state": child.state}
    if child.state in ("completed", "failed", "cancelled"):
        return Reason(
            "child",
            f"child run {child.id} ({child.workflow}) {child.state}; the next step records it.",
            details=details,
        )
    stuck = f", stuck: {child.stuck_reason}" if child.stuck_reason else ""
    return Reason(
        "child",
        f"waiting on child run {child.id} ({child.workflow}), which is {child.state}{stuck} "
        f"(`continuum doctor {child.id}`).",
        attention=bool(child.stuck_reason),
        details=details,
    )


def diagnose_runs(journal: SQLJournal, probe: WorkerProbe, run_ids: Iterable[str]) -> list[Diagnosis]:
    """Diagnose each run in ``run_ids`` (a finished run gets a single ``finished`` reason)."""
    out = []
    for run_id in run_ids:
        work = pending_work(journal, run_id)
        if work.run.terminal:
            out.append(Diagnosis(run_id, work.run.workflow, work.run.state, [Reason("finished", "finished.")]))
        else:
            out.append(diagnose(work, probe))
    return out


def diagnose_open_runs(journal: SQLJournal, probe: WorkerProbe, limit: int = 500) -> list[Diagnosis]:
    """Diagnose every non-terminal run, oldest first, at most ``limit``."""
    return diagnose_runs(journal, probe, open_run_ids(journal, limit))


__all__ = ["Diagnosis", "Reason", "WorkerProbe", "diagnose", "diagnose_open_runs", "diagnose_runs"]
