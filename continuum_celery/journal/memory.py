"""The in-memory journal: the SQL journal's twin, for unit tests and experiments.

It keeps the contract of :mod:`.base` with the SQL adapter's semantics (fenced
claims, outcome resolution order, poke de-duplication, sweep, idempotency keys)
and the same pure rules (:mod:`.rules`), over plain dicts behind one lock.
Time comes from an injectable clock so tests can move it. Payloads are stored
as JSON copies, so a caller's later mutation never reaches the journal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from ..serialization import dumps
from .base import (
    Dispatch,
    Event,
    Journal,
    NewRun,
    RunRecord,
)
from .memory_steps import MemorySteps
from .memory_tables import (
    Due,
    attempt_of,
    claimable,
    copy_event,
    due_run,
    expired_run,
    expired_task,
    new_task,
    replay_of,
    retry_task,
)
from .memory_tasks import MemoryTasks
from .rules import REDISPATCH_BACKOFF_CAP, TERMINAL, attempt_timeout_error, run_conflict, summarise_versions


class MemoryJournal(MemorySteps, MemoryTasks, Journal):
    """A journal in this process's memory; lost when the process ends.

    Args:
        clock: returns the current aware UTC time (tests pass a settable one).
        activity_timeout: default start-to-close seconds of an activity attempt.
        snapshot_every: events between two snapshots of a run's replay log.
    """

    # ---- runs --------------------------------------------------------------------------
    def create_run(self, run: NewRun) -> tuple[RunRecord, bool]:
        with self._lock:
            existing = self._runs.get(run.id)
            if existing is not None:
                if existing.workflow != run.workflow or dumps(existing.input) != dumps(run.input):
                    raise run_conflict(run.id, existing.workflow)
                return existing.record(), False
            return self._insert_run(run, self.clock()).record(), True

    def get_run(self, run_id: str) -> RunRecord:
        with self._lock:
            return self._run(run_id).record()

    def history(self, run_id: str, after_seq: int = 0) -> list[Event]:
        with self._lock:
            return [copy_event(e) for e in self._events.get(run_id, []) if e.seq > after_seq]

    def list_runs(
        self,
        *,
        workflow: str | None = None,
        state: str | None = None,
        created_after: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        with self._lock:
            found = [
                r
                for r in sorted(self._runs.values(), key=lambda r: r.id)
                if (not workflow or r.workflow == workflow)
                and (not state or r.state == state)
                and (not created_after or r.created_at >= created_after)
            ]
            found.sort(key=lambda r: r.created_at, reverse=True)
            return [r.record() for r in found[offset : offset + limit]]

    def continued_to(self, run_id: str) -> str | None:
        with self._lock:
            return self._successor(run_id)

    # ---- sweep -------------------------------------------------------------------------
    def sweep(self, *, batch: int, redispatch_after: float) -> list[Dispatch]:
        with self._lock:
            now = self.clock()
            stale = timedelta(seconds=redispatch_after)
            dispatches: list[Dispatch] = []
            for run in [*self._due(due_run, now, stale, batch), *self._due(expired_run, now, stale, batch)]:
                run.dispatched_at = now
                dispatches.append(replay_of(run))
            for task in [*self._due(new_task, now, stale, batch), *self._due(retry_task, now, stale, batch)]:
                task.dispatched_at = now
                dispatches.append(attempt_of(task))
            for task in self._due(expired_task, now, None, batch):
                error = attempt_timeout_error(task.attempt, task.spec.timeout, task.owner)
                dispatches += self._fail_attempt(task, error, True, now).dispatches
            return dispatches

    def _due(self, kind: Due, now: datetime, redispatch: timedelta | None, batch: int) -> list[Any]:
        """The first ``batch`` rows of one kind of due work, oldest first; with ``redispatch``, only unsent ones.

        A row already dispatched looks lost after ``redispatch``, then after as long as it had
        waited when last sent, up to ``REDISPATCH_BACKOFF_CAP`` times ``redispatch`` (as on PostgreSQL).
        """
        rows = self._tasks.values() if kind in (new_task, retry_task, expired_task) else self._runs.values()
        found = [(due, r) for r in rows if (due := kind(r, now)) is not None]
        if redispatch is not None:
            found = [
                (due, r)
                for due, r in found
                if r.dispatched_at is None
                or r.dispatched_at
                < now - max(redispatch, min(r.dispatched_at - due, redispatch * REDISPATCH_BACKOFF_CAP))
            ]
        return [r for _, r in sorted(found, key=lambda pair: pair[0])[:batch]]

    def due_backlog(self) -> int:
        """Due work no worker has started yet (dispatched or not), as the SQL journal counts it."""
        with self._lock:
            now = self.clock()
            kinds: list[Due] = [due_run, expired_run, new_task, retry_task, expired_task]
            return sum(len(self._due(k, now, None, len(self._runs) + len(self._tasks))) for k in kinds)

    # ---- versions ----------------------------------------------------------------------
    def upsert_versions(self, hostname: str, versions: Sequence[tuple[str, str, int, str]]) -> list[Dispatch]:
        with self._lock:
            now = self.clock()
            dispatches = []
            for workflow, version_hash, version, module in versions:
                row = self._versions.setdefault(
                    (workflow, version_hash, hostname),
                    {"workflow": workflow, "version_hash": version_hash, "hostname": hostname, "first_seen_at": now},
                )
                row.update(version=version, module=module, last_seen_at=now)
                for run in self._runs.values():
                    parked = run.stuck_reason == "unknown_version" and run.state not in TERMINAL
                    if parked and (run.workflow, run.version_hash) == (workflow, version_hash):
                        run.stuck_reason, run.next_wakeup_at, run.dispatched_at = None, now, now
                        dispatches.append(replay_of(run))
            return dispatches

    def park_unknown_versions(
        self, *, live_within: float, batch: int, also_live: Collection[tuple[str, str]] = ()
    ) -> list[tuple[str, str, int]]:
        with self._lock:
            now = self.clock()
            since = now - timedelta(seconds=live_within)
            live = {(v["workflow"], v["version_hash"]) for v in self._versions.values() if v["last_seen_at"] >= since}
            if not live:
                return []
            due = [r for r in self._runs.values() if claimable(r, now) and (r.workflow, r.version_hash) not in live]
            for run in [r for r in due[:batch] if (r.workflow, r.version_hash) not in also_live]:
                # An expired lease on a version nobody serves is taken back too: its holder is gone.
                run.state = "suspended" if run.state == "running" else run.state
                run.stuck_reason, run.lease_owner, run.lease_expires_at = "unknown_version", None, None
                run.next_wakeup_at, run.dispatched_at = now, None
            parked = Counter(
                (r.workflow, r.version_hash)
                for r in self._runs.values()
                if r.stuck_reason == "unknown_version" and r.state not in TERMINAL
            )
            return [(w, h, n) for (w, h), n in sorted(parked.items())]

    def retract_versions(self, hostname: str) -> None:
        with self._lock:
            self._versions = {k: v for k, v in self._versions.items() if v["hostname"] != hostname}

    def list_versions(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = sorted(self._versions.values(), key=lambda r: (r["workflow"], r["version"]))
            pinned = Counter((r.workflow, r.version_hash) for r in self._runs.values() if r.state not in TERMINAL)
            return summarise_versions([dict(r) for r in rows], pinned)
