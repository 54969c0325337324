"""Activity attempts, outside input and the sweep, in memory: the twin of ``sql_tasks`` and ``SQLJournal.sweep``."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgument
from ..events import Kind
from ..serialization import roundtrip
from .base import ActivityClaim, ActivityOutcome, Dispatch
from .memory_tables import MemoryTables, SignalRow, attempt_of, replay_of


class MemoryTasks(MemoryTables):
    """Activity task rows, the run inbox and the sweep."""

    # ---- activities --------------------------------------------------------------------
    def claim_activity(self, task_id: str, attempt: int, owner: str) -> ActivityClaim | None:
        with self._lock:
            return self._claim_locked(task_id, attempt, owner)

    def finish_activity(
        self,
        claim: ActivityClaim,
        *,
        result: Any = None,
        error: dict[str, Any] | None = None,
        retryable: bool = True,
    ) -> ActivityOutcome:
        with self._lock:
            now = self.clock()
            task = self._tasks.get(claim.task_id)
            if task is None or task.attempt != claim.attempt or task.state != "running":
                return ActivityOutcome("stale")
            if error is not None:
                return self._fail_attempt(task, error, retryable, now)
            task.state, task.result, task.lease_expires_at = "completed", roundtrip(result), None
            task.finished_at = task.updated_at = now
            key = claim.idempotency_key
            if key and key not in self._results:
                self._results[key] = {"activity": claim.name, "result": task.result, "run_id": claim.run_id}
            return ActivityOutcome("completed", self._poke(claim.run_id, now))

    # ---- outside input -----------------------------------------------------------------
    def send_signal(self, run_id: str, name: str, payload: Any) -> list[Dispatch]:
        with self._lock:
            self._open_run(run_id, f"receive signal {name!r}")
            self._signals.append(SignalRow(len(self._signals) + 1, run_id, name, roundtrip(payload)))
            return self._poke(run_id, self.clock())

    def request_cancel(self, run_id: str) -> list[Dispatch]:
        with self._lock:
            # A run that continued as new lives on in its successor: cancel that one.
            while (nxt := self._successor(run_id)) is not None:
                run_id = nxt
            existing = self._runs.get(run_id)
            if existing is not None and existing.state == "cancelled":
                return []
            run = self._open_run(run_id, "be cancelled")
            if run.cancel_requested_at is not None:
                return []
            run.cancel_requested_at = self.clock()
            return self._poke(run_id, run.cancel_requested_at) + self._cancel_descendants(
                run_id, run.cancel_requested_at
            )

    def request_retry(self, run_id: str, who: str) -> list[Dispatch]:
        with self._lock:
            run = self._open_run(run_id, "be retried")
            if run.state == "running":
                raise InvalidArgument(
                    f"run {run_id} is running now (lease held by {run.lease_owner}); nothing to retry."
                )
            now = self.clock()
            # Attempts waiting out a retry back-off run now: the operator says the cause is fixed.
            hurried = [
                t
                for t in self._tasks.values()
                if t.run_id == run_id and t.state == "scheduled" and t.retry_at is not None and t.retry_at > now
            ]
            for task in hurried:
                task.retry_at = task.dispatched_at = task.updated_at = now
            activities = [{"activity": t.name, "attempt": t.attempt} for t in hurried]
            payload = {"by": who, "stuck_reason": run.stuck_reason, "activities": activities}
            self._append(run, Kind.RETRY_REQUESTED, None, None, payload)
            run.stuck_reason = None
            run.next_wakeup_at = run.dispatched_at = now
            return [replay_of(run)] + [attempt_of(t) for t in hurried]
