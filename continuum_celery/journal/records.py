"""The values the journal contract speaks in: run rows, leases, claims, dispatches, step results.

Plain frozen data, shared by the contract (:mod:`.base`), its adapters and the
engine parts that call them; nothing here reads or writes storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..events import Event, InboxSignal
from ..states import is_terminal


@dataclass(frozen=True)
class RunRecord:
    """A run row as the journal holds it."""

    id: str
    workflow: str
    version_hash: str
    version: int
    state: str
    input: Any
    result: Any
    error: dict[str, Any] | None
    lease_token: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    next_wakeup_at: datetime | None
    last_seq: int
    parent_run_id: str | None
    parent_command_id: int | None
    correlation_id: str
    continued_from_run_id: str | None
    cancel_requested: bool
    stuck_reason: str | None
    trace_context: dict[str, str]
    created_at: datetime
    updated_at: datetime

    @property
    def terminal(self) -> bool:
        return is_terminal(self.state)


@dataclass(frozen=True)
class CanvasLink:
    """What follows a run started by a Celery task: the task's id and its request's canvas fields.

    ``request`` holds the callbacks, errbacks, chain, chord and group fields of the start
    task's request (see :mod:`continuum_celery.canvas`); they are sent once when the run ends.
    """

    task_id: str
    request: dict[str, Any]


@dataclass(frozen=True)
class DueLink:
    """A canvas link whose run has ended (``completed``, ``failed`` or ``cancelled``), claimed for sending."""

    task_id: str
    run_id: str
    workflow: str
    state: str
    result: Any
    error: dict[str, Any] | None
    request: dict[str, Any]


@dataclass(frozen=True)
class NewRun:
    """What starting a run writes (and, for a run started by a Celery task, its canvas link)."""

    id: str
    workflow: str
    version_hash: str
    version: int
    input: Any
    parent_run_id: str | None = None
    parent_command_id: int | None = None
    correlation_id: str | None = None
    continued_from_run_id: str | None = None
    trace_context: dict[str, str] = field(default_factory=dict)
    #: Workflow execution timeout in seconds: a ``deadline`` timer (command 0) then appends ``run_timed_out``.
    timeout: float | None = None
    link: CanvasLink | None = None


@dataclass(frozen=True)
class Lease:
    """Proof of holding a run: its fencing token."""

    run_id: str
    token: int
    owner: str


@dataclass(frozen=True)
class Dispatch:
    """A Celery message to send once the transaction that decided it has committed.

    ``kind`` is ``replay`` (``id`` = run id) or ``activity`` (``id`` = task id, with ``attempt``).
    A replay carries the run's ``version_hash`` so it is routed to that version's queue.
    """

    kind: str
    id: str
    queue: str | None = None
    attempt: int = 0
    label: str = ""
    due: datetime | None = None
    version_hash: str | None = None


@dataclass
class StepStart:
    """A claimed run, its new outcomes resolved, and the events after the caller's position.

    With ``after_seq=0`` an adapter may start ``events`` with a snapshot: the run's
    compacted replay log up to ``snapshot_seq`` (see :mod:`continuum_celery.snapshots`),
    followed by the stored events after it. ``snapshot_seq`` is 0 when none was used.
    """

    lease: Lease
    run: RunRecord
    events: list[Event]
    now: datetime
    wake_seq: int
    dispatches: list[Dispatch] = field(default_factory=list)
    snapshot_seq: int = 0
    #: Signals no pending wait took at the claim (at most ``run_rules.INBOX_BATCH``), for new waits of this step.
    inbox: list[InboxSignal] = field(default_factory=list)


@dataclass
class StepResult:
    """What committing a decision produced."""

    last_seq: int
    dispatches: list[Dispatch] = field(default_factory=list)
    runnable_again: bool = False
    next_wakeup_at: datetime | None = None
    finished_state: str | None = None
    continued_run_id: str | None = None
    #: The attempt claimed for the caller to run itself (``commit_step(inline=...)``).
    inline_claim: ActivityClaim | None = None
    #: The run stayed ``running`` under the caller's lease, its expiry untouched (the caller renews it).
    lease_kept: bool = False
    #: The journal's clock at the commit (the next decision's ``now`` when the lease was kept).
    now: datetime | None = None
    #: Nothing was written: input reached the run while its inline attempt ran (``completed`` given
    #: and ``wake_seq`` moved), so the decision must be taken again after that input is resolved.
    declined: bool = False


@dataclass(frozen=True)
class ActivityClaim:
    """An activity (or compensation) attempt this worker now owns."""

    task_id: str
    run_id: str
    kind: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    attempt: int
    max_attempts: int
    retry_policy: dict[str, Any]
    timeout: float | None
    idempotency_key: str | None
    compensated_result: Any = None
    workflow: str = ""
    trace_context: dict[str, str] = field(default_factory=dict)
    #: Most seconds between heartbeats (None: no heartbeat needed).
    heartbeat_timeout: float | None = None
    #: Details of the last heartbeat an earlier attempt recorded (None: none did).
    last_heartbeat: Any = None
    #: Seconds all attempts together may take (None: no limit), and what was left of it at the claim.
    schedule_to_close: float | None = None
    close_in: float | None = None


@dataclass(frozen=True)
class Inline:
    """Ask ``commit_step`` to claim one scheduled activity for the lease owner to run itself."""

    command_id: int


@dataclass(frozen=True)
class CompletedAttempt:
    """An inline attempt that succeeded, recorded by the next ``commit_step`` with its decision."""

    claim: ActivityClaim
    command_id: int
    result: Any


@dataclass(frozen=True)
class ActivityOutcome:
    """What finishing an attempt did: ``completed``, ``failed``, ``retry`` or ``stale``."""

    status: str
    dispatches: list[Dispatch] = field(default_factory=list)
