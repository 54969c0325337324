"""One replay step of a run: claim, resolve, replay, commit, dispatch.

This is what ``continuum.replay`` does. A step that finds more work waiting
when it commits (an activity finished meanwhile, an idempotent result was
already stored) goes on in the same task instead of sending another message.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import telemetry, tracing
from .activities import get_activity
from .cache import ExecutionCache
from .context import RunInfo, context_factory
from .dispatch import Dispatcher
from .errors import LeaseLost, NondeterminismError
from .events import Event, Kind, NewEvent
from .executor import activity_span, execute, record_attempt, report
from .journal.base import Journal
from .journal.records import ActivityClaim, CompletedAttempt, Inline, StepResult, StepStart
from .journal.task_rules import task_outcome
from .leases import LeaseRenewer
from .notify import Notifier
from .replay import ContinueAsNew, Decision, Execution
from .supervisor import AttemptResult, Verdict, supervise
from .versioning import Registry

log = logging.getLogger(__name__)

#: Steps one task takes at most before it hands the run back to the queue (fairness).
MAX_STEPS_PER_TASK = 1000


@dataclass
class Stepper:
    """Advances runs; shared by the Celery task and the embedded worker."""

    journal: Journal
    registry: Registry
    dispatcher: Dispatcher
    notifier: Notifier | None
    cache: ExecutionCache
    renewer: LeaseRenewer
    owner: str
    lease_ttl: float
    max_payload_bytes: int
    #: Queue of replay tasks (None: the app's default); activities routed here may run inline.
    queue: str | None = None
    inline_activities: bool = True

    def step(self, run_id: str) -> str:
        """Advance ``run_id`` as far as it can go now; return the run's state afterwards (or ``skipped``)."""
        with self.journal.holding_connection():
            return self._step(run_id)

    def _step(self, run_id: str) -> str:
        state = "skipped"
        for _ in range(MAX_STEPS_PER_TASK):
            execution = self.cache.take(run_id)
            try:
                start = self.journal.begin_step(
                    run_id, self.owner, self.lease_ttl, execution.last_seq if execution else 0
                )
            except BaseException:
                if execution is not None:
                    execution.close()
                raise
            if start is None:
                if execution is not None:
                    self._keep_unless_ended(run_id, execution)
                return state
            if execution is not None and execution.last_seq > start.run.last_seq:
                # The journal is behind this process's memory (it lost commits it had acknowledged, e.g. a
                # failover to a lagging replica): the journal is the truth, so replay it from the start.
                execution.close()
                execution = None
                start.events = self.journal.history(run_id)
            self.dispatcher.send(start.dispatches)
            self._emit_outcomes(start)
            with tracing.span(
                "continuum.replay",
                trace_context=start.run.trace_context,
                attributes={"continuum.run_id": run_id, "continuum.workflow": start.run.workflow},
            ):
                state, again = self._advance(start, execution)
            if not again:
                return state
        assert start is not None  # the loop ran and every pass claimed the run
        self.dispatcher.replay(run_id, start.run.workflow, start.run.version_hash)
        return state

    def _advance(self, start: StepStart, execution: Execution | None) -> tuple[str, bool]:
        run = start.run
        rlog = telemetry.run_logger(__name__, run.id, run.workflow)
        began = time.perf_counter()
        defn = self.registry.find(run.workflow, run.version_hash)
        if defn is None:
            telemetry.emit(
                "unknown_version",
                run_id=run.id,
                workflow=run.workflow,
                version_hash=run.version_hash,
            )
            rlog.warning(
                "needs version %s, which this worker has not loaded; leaving the run suspended for a worker with it",
                run.version_hash,
            )
            self.journal.release(start.lease, stuck_reason="unknown_version")
            if execution is not None:
                execution.close()
            return "suspended", False
        cache_hit = execution is not None
        if execution is None:
            info = RunInfo(
                run.id,
                run.workflow,
                run.version_hash,
                parent_run_id=run.parent_run_id,
                correlation_id=run.correlation_id,
            )
            execution = Execution(
                defn.fn,
                run.input,
                context_factory(info, self.max_payload_bytes),
                saga=getattr(defn, "saga", False),
                run_id=run.id,
            )
        # This step owns the execution: whatever ends it (a database error included), the body's
        # thread is either kept in the cache for the next step or released, never left parked.
        keep = False
        try:
            with self.renewer.hold(start.lease):  # from the claim to the last step taken under it
                state, again, keep = self._decide(start, execution, rlog, began, cache_hit)
            return state, again
        finally:
            if keep:
                self.cache.put(run.id, execution)
            else:
                execution.close()

    def _keep_unless_ended(self, run_id: str, execution: Execution) -> None:
        """Put back an execution whose run could not be claimed, unless the run has ended meanwhile."""
        try:
            ended = self.journal.get_run(run_id).terminal
        except Exception:
            ended = True  # cannot tell: a replay from the journal is always correct
        if ended:
            execution.close()
        else:
            self.cache.put(run_id, execution)

    def _decide(
        self, start: StepStart, execution: Execution, rlog: Any, began: float, cache_hit: bool
    ) -> tuple[str, bool, bool]:
        """Replay, commit, and run lone activities inline for as long as the run stays this worker's.

        Returns the run's state, whether it can step again at once, and whether to keep the execution.
        """
        run = start.run
        events, now, loaded, inbox = start.events, start.now, len(start.events), start.inbox
        completed: CompletedAttempt | None = None
        completed_attempt: AttemptResult | None = None
        while True:
            try:
                advance_began = time.perf_counter()
                decision = execution.advance(events, now, inbox)
                advance_duration = time.perf_counter() - advance_began
            except NondeterminismError as exc:
                telemetry.emit("nondeterminism", run_id=run.id, workflow=run.workflow, seq=getattr(exc, "seq", None))
                rlog.error("%s", exc)
                if completed is not None:  # its effect happened: record it before parking the run
                    self.journal.finish_activity(completed.claim, result=completed.result)
                self.journal.release(start.lease, stuck_reason="nondeterminism")
                return "suspended", False, False
            cid = self._inline_candidate(decision)
            inline = Inline(cid) if cid is not None else None
            try:
                result = self.journal.commit_step(
                    start.lease,
                    decision.commands,
                    decision.outcome,
                    wake_seq=start.wake_seq,
                    child_versions=self._child_versions(decision),
                    continue_version=self._continue_version(run.workflow, decision),
                    inline=inline,
                    completed=completed,
                )
            except LeaseLost:
                telemetry.emit("lease_lost", run_id=run.id, workflow=run.workflow, token=start.lease.token)
                raise
            if result.declined and completed is not None:
                # Input arrived while the attempt ran: record it plainly, and decide again once that input
                # is resolved (a fresh replay: this execution already consumed the folded result).
                self._record(completed.claim, completed_attempt or AttemptResult(completed.result, None, True, 0.0))
                self.journal.release(start.lease)
                return "suspended", True, False
            execution.acknowledge(result.last_seq)
            telemetry.emit(
                "replay_step",
                run_id=run.id,
                workflow=run.workflow,
                duration=time.perf_counter() - began,
                events=len(events) + len(decision.commands),
                advance=advance_duration,
                loaded=loaded,
                snapshot_seq=start.snapshot_seq,
                cache_hit=cache_hit,
            )
            if completed is not None and completed_attempt is not None:
                report(completed.claim, "completed", completed_attempt, None)
            self._emit_commands(run.id, run.workflow, decision.commands)
            self.dispatcher.send(result.dispatches)
            if result.finished_state is not None:
                self._announce_end(run.id, run.workflow, result, decision, rlog)
                return result.finished_state, False, False
            if result.lease_kept and result.inline_claim is not None and cid is not None:
                # The run is still ours: run the activity, then decide on its result in one transaction.
                with activity_span(result.inline_claim):
                    verdict = self._supervise(result.inline_claim, watch_run=True)
                attempt = verdict.attempt
                if attempt is None or attempt.error is not None:
                    self._give_back(start, result.inline_claim, verdict)
                    return "suspended", True, True
                completed, completed_attempt = CompletedAttempt(result.inline_claim, cid, attempt.result), attempt
                kind, payload = task_outcome("activity", "completed", attempt.result, None, result.inline_claim.attempt)
                events = [Event(result.last_seq + 1, kind, cid, result.inline_claim.name, payload)]
                now, loaded, began, cache_hit = result.now or now, 0, time.perf_counter(), True
                inbox = []  # what this claim read may be consumed by now; the next claim reads it again
                continue
            if result.inline_claim is not None:
                return "suspended", self._run_inline(result.inline_claim) or result.runnable_again, True
            if result.next_wakeup_at is not None and not result.runnable_again:
                self.dispatcher.schedule_wakeup(run.id, result.next_wakeup_at, run.version_hash)
            return "suspended", result.runnable_again, True

    def _child_versions(self, decision: Decision) -> dict[str, tuple[str, int]]:
        """The current (hash, version) of each child workflow the decision starts."""
        versions = {}
        for cmd in decision.commands:
            if cmd.kind is Kind.CHILD_STARTED and cmd.name:
                child = self.registry.current(cmd.name)
                versions[cmd.name] = (child.version_hash, child.version)
        return versions

    def _continue_version(self, workflow: str, decision: Decision) -> tuple[str, int] | None:
        """The version a continue-as-new starts its next run on: the current one."""
        if not isinstance(decision.outcome, ContinueAsNew):
            return None
        current = self.registry.current(workflow)
        return current.version_hash, current.version

    def _announce_end(self, run_id: str, workflow: str, result: StepResult, decision: Decision, rlog: Any) -> None:
        """Telemetry and the completion notification of a run that just ended."""
        assert result.finished_state is not None
        if result.continued_run_id is not None:
            telemetry.emit("run_continued", run_id=run_id, workflow=workflow, next_run_id=result.continued_run_id)
            telemetry.emit("run_started", run_id=result.continued_run_id, workflow=workflow, continued_from=run_id)
        else:
            error = getattr(decision.outcome, "error", None)  # Fail and Cancelled carry one
            extra = {"error": error} if error is not None else {}
            telemetry.emit(f"run_{result.finished_state}", run_id=run_id, workflow=workflow, **extra)
        if self.notifier is not None:
            try:
                self.notifier.publish_finished(run_id, result.finished_state)
            except Exception:
                rlog.debug("finish notification lost; waiters fall back to polling", exc_info=True)

    def _inline_candidate(self, decision: Decision) -> int | None:
        """The command to run in this task: the one activity a waiting body scheduled, on this queue.

        A lone awaited activity gains nothing from a Celery round trip (same queue, the body waits
        for it); fan-outs, other queues, plain Celery tasks and compensations still go through Celery.
        """
        if not self.inline_activities or decision.outcome is not None:
            return None
        scheduled = [c for c in decision.commands if c.kind is Kind.ACTIVITY_SCHEDULED]
        if len(scheduled) != 1 or get_activity(scheduled[0].name or "") is None:
            return None
        cmd = scheduled[0]
        return cmd.command_id if (cmd.payload.get("queue") or None) == self.queue else None

    def _run_inline(self, claim: ActivityClaim) -> bool:
        """Run a claimed attempt here and record it; True when the run can step again at once."""
        with activity_span(claim):
            verdict = self._supervise(claim)
            return verdict.attempt is not None and self._record(claim, verdict.attempt)

    def _supervise(self, claim: ActivityClaim, watch_run: bool = False) -> Verdict:
        """Run an inline attempt exactly as ``continuum.activity`` would, watched (see :mod:`.supervisor`)."""
        return supervise(
            self.journal,
            claim,
            lambda: execute(claim, self.owner, None, self.max_payload_bytes),
            owner=self.owner,
            watch_run=watch_run,
            record_late=lambda attempt: record_attempt(self.journal, self.dispatcher, claim, attempt),
        )

    def _give_back(self, start: StepStart, claim: ActivityClaim, verdict: Verdict) -> None:
        """End a step whose inline attempt did not succeed: record what it came to, and release the run.

        The next claim (this task's, at once) resolves the failure, waits out the retry, or, after
        a cancel, lets the body see it while the detached attempt runs on.
        """
        if verdict.detached:
            self.journal.detach_inline(claim)
        elif verdict.attempt is not None:
            self._record(claim, verdict.attempt)
        try:
            self.journal.release(start.lease)
        except LeaseLost:
            telemetry.emit("lease_lost", run_id=start.run.id, workflow=start.run.workflow, token=start.lease.token)
            raise

    def _record(self, claim: ActivityClaim, attempt: AttemptResult) -> bool:
        """Record an attempt run in this task; True when that woke its (suspended) run for us to step."""
        outcome = self.journal.finish_activity(
            claim, result=attempt.result, error=attempt.error, retryable=attempt.retryable
        )
        retry_due = next((d.due for d in outcome.dispatches if d.kind == "activity"), None)
        report(claim, outcome.status, attempt, retry_due)
        own = [d for d in outcome.dispatches if d.kind == "replay" and d.id == claim.run_id]
        self.dispatcher.send([d for d in outcome.dispatches if d not in own])
        return bool(own)

    @staticmethod
    def _emit_commands(run_id: str, workflow: str, commands: list[NewEvent]) -> None:
        for cmd in commands:
            if cmd.kind is Kind.ACTIVITY_SCHEDULED:
                telemetry.emit(
                    "activity_scheduled",
                    run_id=run_id,
                    workflow=workflow,
                    activity=cmd.name,
                    attempt=1,
                )
            elif cmd.kind is Kind.CHILD_STARTED:
                telemetry.emit("run_started", run_id=cmd.payload.get("run_id"), workflow=cmd.name, parent_run_id=run_id)
            elif cmd.kind is Kind.SIGNAL_RECEIVED:
                telemetry.emit("signal_received", run_id=run_id, workflow=workflow, signal=cmd.name)

    @staticmethod
    def _emit_outcomes(start: StepStart) -> None:
        """Announce the timers and signals this claim resolved (the events past the run's old ``last_seq``)."""
        run = start.run
        for event in start.events:
            if event.seq <= run.last_seq:
                continue
            if event.kind is Kind.TIMER_FIRED:
                fire_at = event.payload.get("fire_at")
                lateness = (start.now - datetime.fromisoformat(fire_at)).total_seconds() if fire_at else None
                telemetry.emit("timer_fired", run_id=run.id, workflow=run.workflow, lateness=lateness)
            elif event.kind is Kind.SIGNAL_RECEIVED:
                telemetry.emit("signal_received", run_id=run.id, workflow=run.workflow, signal=event.name)
