"""The journal's decisions about runs, as pure functions: storage code only reads and writes rows.

How a run starts and ends, what a child or a continue-as-new starts, when a
wait expires, and the errors a refused write under a lease raises.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import LeaseLost, RunConflict
from ..events import Kind, NewEvent
from ..replay import Cancelled, Complete, ContinueAsNew, Fail, Outcome
from .records import ActivityClaim, Lease, NewRun

#: Longest wait before the sweep re-sends a dispatched row, in multiples of ``redispatch_after``.
REDISPATCH_BACKOFF_CAP = 8


#: Signals one claim hands to its step at most (a step consumes those its new waits take, in one commit).
INBOX_BATCH = 1000


#: A child run's final state -> the outcome event its parent sees.
CHILD_OUTCOMES = {
    "completed": Kind.CHILD_COMPLETED,
    "failed": Kind.CHILD_FAILED,
    "cancelled": Kind.CHILD_CANCELLED,
}


#: The command id of a run's deadline timer (the body's commands count from 1).
DEADLINE_COMMAND = 0


def started_payload(run: NewRun) -> dict[str, Any]:
    """The ``run_started`` event of a new run."""
    payload = {"input": run.input, "workflow": run.workflow, "version_hash": run.version_hash}
    return {**payload, "timeout": run.timeout} if run.timeout else payload


def timed_out(fire_at: datetime) -> tuple[Kind, dict[str, Any]]:
    """The event a run's deadline timer appends when it fires."""
    return Kind.RUN_TIMED_OUT, {"deadline": fire_at.isoformat()}


def child_outcome(state: str, run_id: str, result: Any, error: Any) -> tuple[Kind, dict[str, Any]]:
    """The outcome event (kind, payload) a parent gets when its child ends ``state``."""
    return CHILD_OUTCOMES[state], {"run_id": run_id, "result": result, "error": error}


def wait_deadline(cmd: NewEvent) -> datetime | None:
    """When a ``timer_scheduled`` fires or a ``signal_wait`` times out (None: never)."""
    at = cmd.payload.get("fire_at") or cmd.payload.get("timeout_at")
    return datetime.fromisoformat(at) if at else None


def lease_lost(lease: Lease, state: str | None, token: int | None) -> LeaseLost:
    """The error for a write under ``lease`` on a run now ``state`` with ``token`` (None: no such run)."""
    return LeaseLost(
        f"run {lease.run_id}: lease token {lease.token} is stale"
        + ("" if state is None else f" (the run is {state} with token {token})")
        + "; another worker owns the run, so this write was discarded.",
        run_id=lease.run_id,
        token=lease.token,
    )


def renewal_refused(lease: Lease) -> LeaseLost:
    """The error for renewing ``lease`` after another worker took the run over (or the run moved on)."""
    return LeaseLost(
        f"run {lease.run_id}: lease token {lease.token} could not be renewed; another worker took over.",
        run_id=lease.run_id,
        token=lease.token,
    )


def inline_attempt_lost(lease: Lease, claim: ActivityClaim) -> LeaseLost:
    """The error for folding an inline attempt the lease holder no longer owns (timed out, or retried)."""
    return LeaseLost(
        f"run {lease.run_id}: inline attempt {claim.attempt} of {claim.name} is no longer this worker's",
        run_id=lease.run_id,
        token=lease.token,
    )


def run_conflict(run_id: str, workflow: str) -> RunConflict:
    """The error for starting ``run_id`` again with another workflow or input (it names a run of ``workflow``)."""
    return RunConflict(
        f"run id {run_id!r} already names a run of {workflow} with another input; "
        "use a new run_id, or the same input to get the existing run's handle.",
        run_id=run_id,
    )


def child_run(
    cmd: NewEvent, parent_id: str, correlation_id: str, child_versions: Mapping[str, tuple[str, int]]
) -> NewRun:
    """The run a ``child_started`` command of ``parent_id`` starts (on the child workflow's current version)."""
    version_hash, version = child_versions[cmd.name or ""]
    return NewRun(
        id=cmd.payload["run_id"],
        workflow=cmd.name or "",
        version_hash=version_hash,
        version=version,
        input=cmd.payload.get("input"),
        parent_run_id=parent_id,
        parent_command_id=cmd.command_id,
        correlation_id=correlation_id,
    )


def continued_run(run: Any, trace_context: dict[str, str], outcome: ContinueAsNew, version: tuple[str, int]) -> NewRun:
    """The run that continues ``run`` (a run row) as new: same workflow, parent and correlation, the new input."""
    return NewRun(
        id=continued_run_id(run.id),
        workflow=run.workflow,
        version_hash=version[0],
        version=version[1],
        input=outcome.input,
        parent_run_id=run.parent_run_id,
        parent_command_id=run.parent_command_id,
        correlation_id=run.correlation_id,
        continued_from_run_id=run.id,
        trace_context=trace_context,
    )


def continued_run_id(run_id: str) -> str:
    """The id of the run that continues ``run_id`` as new (derived, so a retried commit names the same run)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"continuum:{run_id}:continued"))


@dataclass(frozen=True)
class Ending:
    """How a run ends: its state, its terminal event, and the run fields (``result``/``error``) to set."""

    state: str
    kind: Kind
    payload: dict[str, Any]
    fields: dict[str, Any] = field(default_factory=dict)
    next_run_id: str | None = None


def ending(run_id: str, outcome: Outcome) -> Ending:
    """The terminal record of a run whose body decided ``outcome``."""
    if isinstance(outcome, Complete):
        return Ending("completed", Kind.RUN_COMPLETED, {"result": outcome.result}, {"result": outcome.result})
    if isinstance(outcome, (Fail, Cancelled)):
        cancelled = isinstance(outcome, Cancelled)
        return Ending(
            "cancelled" if cancelled else "failed",
            Kind.RUN_CANCELLED if cancelled else Kind.RUN_FAILED,
            {"error": outcome.error},
            {"error": outcome.error},
        )
    assert isinstance(outcome, ContinueAsNew)
    next_id = continued_run_id(run_id)
    return Ending(
        "continued", Kind.RUN_CONTINUED, {"next_run_id": next_id}, {"result": {"continued_to": next_id}}, next_id
    )
