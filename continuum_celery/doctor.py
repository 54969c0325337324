"""``continuum doctor``: why each unfinished run is not progressing.

Every reason is derived from the journal's rows (runs, timers, activity tasks,
signals, workflow versions) and from what the live workers say about themselves
(:mod:`.worker_probe`): whether a lease holder is alive, which versions and
queues they serve. With no reachable broker, liveness is reported as unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .cli_format import heartbeat_text, jsonable, when
from .journal.sql import SQLJournal
from .journal.views import PendingWork, attempt_view
from .serialization import loads
from .worker_probe import ALIVE, DEAD, UNKNOWN, QueueNames, WorkerProbe

log = logging.getLogger(__name__)


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
    if run.state != "running" and run.stuck_reason != "unknown_version":
        reasons += _serving_reasons(work, probe)
    reasons += [_timer_reason(t, work.inbox, now) for t in work.timers]
    reasons += [_task_reason(t, now, probe) for t in work.tasks]
    for task in work.tasks:
        if task.state == "scheduled" and not _waits_out(task, now):
            reasons += _queue_reasons(task, probe)
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


def _serving_reasons(work: PendingWork, probe: WorkerProbe) -> list[Reason]:
    """Whether a live worker has the run's version and consumes the queue its replays go to."""
    run, live = work.run, probe.live_nodes()
    if live is None:
        return []
    if not live.intersection(work.version_hosts):
        hosts = ", ".join(work.version_hosts) or "none recorded"
        who = "no worker answered the ping, so none" if not live else "no live worker"
        return [
            Reason(
                "version",
                f"{who} has {run.workflow} version {run.version} (hash {run.version_hash}); workers "
                f"that loaded it: {hosts}. Start a worker with that code; the run resumes on it.",
                attention=True,
                details={"version_hash": run.version_hash, "hosts": work.version_hosts},
            )
        ]
    if probe.queues is None:
        return []
    queue = probe.queues.replay(run.version_hash)
    if probe.consumed(queue) is not False:
        return []
    return [
        Reason(
            "queue",
            f"no live worker consumes {queue}, the queue of this run's replays: start a worker on the "
            "continuum queue (`celery -A app worker -Q <continuum_queue>`, the app's default queue if unset), "
            "with this version loaded.",
            attention=True,
            details={"queue": queue},
        )
    ]


def _waits_out(task: Any, now: datetime) -> bool:
    return task.retry_at is not None and task.retry_at > now


def _queue_reasons(task: Any, probe: WorkerProbe) -> list[Reason]:
    """A scheduled attempt waiting on a queue no live worker consumes (none when it is consumed or unknown)."""
    if probe.queues is None:
        return []
    queue = probe.queues.activity(task.queue)
    if probe.consumed(queue) is not False:
        return []
    return [
        Reason(
            "queue",
            f"no live worker consumes queue {queue!r}, where {task.name} attempt {task.attempt} waits: start one "
            f"with `celery -A app worker -Q {queue}` (or add it to a worker's -Q).",
            attention=True,
            details={"queue": queue, "task_id": task.id},
        )
    ]


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
    if timer.kind == "deadline":
        return Reason(
            "deadline",
            f"times out {when(timer.fire_at, now)} (@workflow(timeout=...)); then its body gets WorkflowTimeout.",
            details={"deadline": timer.fire_at},
        )
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
        return _running_reason(task, head, details, now, probe)
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


def _running_reason(task: Any, head: str, details: dict[str, Any], now: datetime, probe: WorkerProbe) -> Reason:
    """A running attempt: where, until when, its last heartbeat, and whether it overran a limit."""
    view = attempt_view(task)
    status, holder = _holder(task.owner, probe)
    details.update(
        owner=task.owner,
        owner_status=status,
        expires_at=task.lease_expires_at,
        deadline=view.deadline,
        heartbeat_timeout=view.heartbeat_timeout,
        heartbeat_at=view.heartbeat_at,
        last_heartbeat=view.last_heartbeat,
    )
    beat = heartbeat_text(view.heartbeat_at, view.last_heartbeat, now)
    if view.deadline is not None and view.deadline < now:
        overrun = f"past its deadline since {when(view.deadline, now)} (timeout {task.timeout:g} s)"
    elif view.heartbeat_due is not None and view.heartbeat_due < now:
        overrun = f"no heartbeat within its heartbeat_timeout of {task.heartbeat_timeout:g} s"
    elif task.lease_expires_at is not None and task.lease_expires_at < now:
        overrun = f"its time ran out {when(task.lease_expires_at, now)}"
    else:
        return Reason(
            "activity",
            f"{head}: running on {holder}{beat}; times out {when(view.deadline or task.lease_expires_at, now)}.",
            attention=status == DEAD,
            details=details,
        )
    return Reason(
        "activity",
        f"{head}: running on {holder}{beat}, {overrun}. Its worker should have given it up and is gone or "
        "stalled: keep a worker running (each one sweeps; `celery beat` also does), which fails the attempt "
        "and retries it by its policy; if one is running, check its log for this task.",
        attention=True,
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
        work = journal.pending_work(run_id)
        if work.run.terminal:
            out.append(Diagnosis(run_id, work.run.workflow, work.run.state, [Reason("finished", "finished.")]))
        else:
            out.append(diagnose(work, probe))
    return out


def diagnose_open_runs(journal: SQLJournal, probe: WorkerProbe, limit: int = 500) -> list[Diagnosis]:
    """Diagnose every non-terminal run, oldest first, at most ``limit``."""
    return diagnose_runs(journal, probe, journal.open_run_ids(limit))


__all__ = ["Diagnosis", "QueueNames", "Reason", "WorkerProbe", "diagnose", "diagnose_open_runs", "diagnose_runs"]
