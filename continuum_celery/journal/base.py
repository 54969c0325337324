"""The journal contract: what the SQL journal guarantees on SQLite and on PostgreSQL.

Invariants every implementation keeps (each has a test in tests/journal):

1. A claim increments the run's ``lease_token``; a write that carries a stale
   token raises ``LeaseLost`` and changes nothing.
2. A run's events are numbered 1..n without gap or duplicate.
3. A run reaches a terminal state at most once.
4. An activity task attempt completes at most once; a late or duplicate
   completion is dropped.
5. Everything needed to resume lives here: wake-ups and dispatches are
   re-derivable from ``next_wakeup_at``, task states and ``dispatched_at``.

A database error leaves an adapter as an error of :mod:`continuum_celery.errors`
(``JournalUnavailable``, ``SchemaNotMigrated``, ``JournalError``), never as its driver's.
"""


from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

from ..events import Event, NewEvent
from ..replay import Outcome
from .records import (
    ActivityClaim,
    ActivityOutcome,
    CompletedAttempt,
    Dispatch,
    DueLink,
    Inline,
    Lease,
    NewRun,
    RunRecord,
    StepResult,
    StepStart,
)


class Journal(ABC):
    """The contract shared by every journal adapter."""

    # ---- runs --------------------------------------------------------------------------
    @abstractmethod
    def create_run(self, run: NewRun) -> tuple[RunRecord, bool]:
        """Insert a pending run with its ``run_started`` event; idempotent on ``run.id``.

        ``run.link`` is stored with the run in the same transaction, also when the run
        existed already (another canvas waiting for the same run); once per ``task_id``.

        Returns (the run, whether it was created now).

        Raises:
            RunConflict: the id exists with another workflow or input.
        """

    @abstractmethod
    def get_run(self, run_id: str) -> RunRecord:
        """Raises RunNotFound."""

    @abstractmethod
    def history(self, run_id: str, after_seq: int = 0) -> list[Event]:
        """The run's events after ``after_seq``, in order."""

    @abstractmethod
    def list_runs(
        self,
        *,
        workflow: str | None = None,
        state: str | None = None,
        created_after: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Runs newest first, filtered."""

    @abstractmethod
    def continued_to(self, run_id: str) -> str | None:
        """The id of the run that continued ``run_id`` as new, if any."""

    # ---- steps -------------------------------------------------------------------------
    def holding_connection(self) -> AbstractContextManager[None]:
        """Run this thread's journal calls inside the block on one connection (a step loop's).

        Saves a pool checkout and liveness check per transaction; adapters without
        connections keep the default, which does nothing.
        """
        return nullcontext()

    @abstractmethod
    def begin_step(self, run_id: str, owner: str, ttl: float, after_seq: int) -> StepStart | None:
        """Claim a runnable run, append the outcomes now available, return events after ``after_seq``.

        With ``after_seq=0`` (a fresh execution) the events may begin with the run's latest
        snapshot (``StepStart.snapshot_seq``) instead of the full history.

        Returns None when the run is not claimable (held, finished, stuck, or not yet due).
        """

    @abstractmethod
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
        """Append the decision's commands, create their rows, then suspend or finish the run.

        ``inline`` names an ``activity_scheduled`` command whose first attempt the caller will
        run itself: it is claimed by the lease owner in the same transaction and returned as
        ``StepResult.inline_claim`` instead of a dispatch (None there: dispatched as usual).
        When nothing else is waiting for the run (``wake_seq`` unchanged) the run then stays
        ``running`` under the lease (``lease_kept``) instead of being suspended.

        ``completed`` records an inline attempt's success first, as the ``activity_completed``
        event at ``last_seq + 1``, so one transaction carries an outcome and the decision built
        on it. Raises ``LeaseLost`` if that attempt is no longer this owner's; returns ``declined``
        without writing if the run's ``wake_seq`` moved (a cancel or signal must be seen first).

        When ``last_seq`` crosses a multiple of the adapter's ``snapshot_every``, the run's
        snapshot is refreshed in the same write; a finished run's snapshots are dropped.

        Raises:
            LeaseLost: the lease moved on; nothing was written.
        """

    @abstractmethod
    def renew(self, lease: Lease, ttl: float) -> None:
        """Extend the lease. Raises LeaseLost."""

    @abstractmethod
    def release(self, lease: Lease, stuck_reason: str | None = None) -> None:
        """Give the run back untouched (suspended), optionally parked with ``stuck_reason``."""

    # ---- activities --------------------------------------------------------------------
    @abstractmethod
    def claim_activity(self, task_id: str, attempt: int, owner: str) -> ActivityClaim | None:
        """Start an attempt; None for a duplicate, late or early delivery."""

    @abstractmethod
    def finish_activity(
        self,
        claim: ActivityClaim,
        *,
        result: Any = None,
        error: dict[str, Any] | None = None,
        retryable: bool = True,
    ) -> ActivityOutcome:
        """Record an attempt's end; schedule a retry or wake the run."""

    @abstractmethod
    def heartbeat(self, task_id: str, attempt: int, details: Any = None, *, record: bool = True) -> str:
        """Note that attempt ``attempt`` of ``task_id`` is alive and say whether it should go on.

        With ``record`` the heartbeat is stored (its time, and ``details`` unless None) and the
        attempt's lease moves to the earlier of its deadline and ``heartbeat_timeout`` from now;
        without it nothing is written (a supervisor watching for a cancel).

        Returns ``running``; ``cancelled`` when its run was asked to stop before the activity was
        scheduled (cleanup scheduled after a cancel goes on), or the run's workflow timeout is due
        and not yet seen by its body; ``abandoned`` when the attempt is
        over (timed out, retried, its run ended): what it returns will not be recorded.
        """

    @abstractmethod
    def detach_inline(self, claim: ActivityClaim) -> None:
        """Let an inline attempt outlive the run lease it started under (its replay task gave the run up).

        It then ends like a ``continuum.activity`` attempt: recorded by ``finish_activity``, or
        failed by the sweep at its deadline; no claim of the run counts it as orphaned.
        """

    # ---- outside input -----------------------------------------------------------------
    @abstractmethod
    def send_signal(self, run_id: str, name: str, payload: Any) -> list[Dispatch]:
        """Store a signal in the run's inbox. Raises RunNotFound / RunFinished."""

    @abstractmethod
    def request_cancel(self, run_id: str) -> list[Dispatch]:
        """Ask the run and its live descendants to stop, in one write; a continued run's successor is the target.

        Until the run's next step journals ``cancel_requested``, none of their activities may be
        claimed. Raises RunNotFound / RunFinished; twice is harmless.
        """

    @abstractmethod
    def request_retry(self, run_id: str, who: str) -> list[Dispatch]:
        """Unpark a stuck run and run now its attempts waiting out a retry back-off, with an audit event.

        The ``retry_requested`` event records ``by`` (``who``), the ``stuck_reason`` cleared and
        the ``activities`` (name, attempt) brought forward. Raises RunNotFound / RunFinished
        (a finished run never changes), InvalidArgument while a worker holds the run.
        """

    # ---- sweep -------------------------------------------------------------------------
    @abstractmethod
    def sweep(self, *, batch: int, redispatch_after: float) -> list[Dispatch]:
        """Re-derive due work: runs due or with expired leases, activity tasks due or expired."""

    def due_backlog(self) -> int | None:
        """Due work no worker has started yet (the ``sweep`` event's ``due_backlog``); None: not counted."""
        return None

    # ---- canvas links ------------------------------------------------------------------
    @abstractmethod
    def claim_links(self, *, run_id: str | None = None, batch: int, hold: float) -> list[DueLink]:
        """Claim for ``hold`` seconds the unsent canvas links of ended runs (of ``run_id``, or of any run).

        A link of a run that continued as new moves to the successor run: it is due when the
        last run of the chain ends. A claimed link is not returned again until ``hold`` passes
        without :meth:`links_sent` (the sender died): each link goes out once, or again only
        after a sender was lost mid-send.
        """

    @abstractmethod
    def links_sent(self, task_ids: Sequence[str]) -> None:
        """Mark links as sent; they are never returned again."""

    # ---- versions ----------------------------------------------------------------------
    @abstractmethod
    def upsert_versions(self, hostname: str, versions: Sequence[tuple[str, str, int, str]]) -> list[Dispatch]:
        """Record (workflow, version_hash, version, module) served by ``hostname`` now.

        Runs parked as ``unknown_version`` on one of these versions become runnable;
        returns their replay dispatches.
        """

    @abstractmethod
    def park_unknown_versions(
        self, *, live_within: float, batch: int, also_live: Collection[tuple[str, str]] = ()
    ) -> list[tuple[str, str, int]]:
        """Park due runs pinned to a version that no live worker serves.

        A version is live when some worker upserted it within ``live_within``
        seconds, or when it is in ``also_live`` (what the sweeping process serves
        itself). When no worker at all is live nothing is parked (nothing can be
        concluded). Parked runs stay ``suspended`` with ``stuck_reason =
        'unknown_version'`` until :meth:`upsert_versions` registers their version.

        Returns:
            (workflow, version_hash, parked runs) for each version with parked runs.
        """

    @abstractmethod
    def retract_versions(self, hostname: str) -> None:
        """Mark the versions ``hostname`` served as no longer live (a clean worker shutdown).

        The rows stay, stopped (``last_seen_at`` = :data:`~continuum_celery.journal.version_rules.STOPPED_AT`),
        until :meth:`forget_versions` removes them with their version.
        """

    @abstractmethod
    def forget_versions(self, versions: Sequence[tuple[str, str]], *, live_within: float) -> list[tuple[str, str]]:
        """Delete the rows of each (workflow, version_hash) that is still stale, in one transaction.

        A version is kept when a worker refreshed it within ``live_within`` seconds or an
        unfinished run is pinned to it (something changed since it was found stale).

        Returns:
            The versions whose rows were deleted.
        """

    @abstractmethod
    def list_versions(self) -> list[dict[str, Any]]:
        """Per (workflow, hash): version, hostnames, first/last seen, pinned non-terminal runs."""

    def close(self) -> None:  # noqa: B027 - optional hook; adapters without connections keep it
        """Release connections."""
