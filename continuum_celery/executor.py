"""One activity (or compensation) attempt: claim it, run the function, record the end.

This is what ``continuum.activity`` does. The claim is a compare-and-swap on
the task row, so a duplicate or late Celery delivery of an attempt does nothing.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from . import telemetry, tracing
from .activities import get_activity
from .dispatch import Dispatcher
from .errors import PayloadError
from .journal.base import Journal
from .journal.records import ActivityClaim
from .serialization import DEFAULT_MAX_PAYLOAD_BYTES, check_json, encode_error, loads
from .supervisor import AttemptResult, log_dropped, supervise

log = logging.getLogger(__name__)


def _resolve(claim: ActivityClaim, celery_tasks: Any) -> Callable[..., Any] | None:
    defn = get_activity(claim.name)
    if claim.kind == "compensation":
        return defn.compensation if defn is not None else None
    if defn is not None:
        return defn.fn
    return celery_tasks.get(claim.name) if celery_tasks is not None else None


def _retryable(exc: BaseException, policy: dict[str, Any]) -> bool:
    if isinstance(exc, PayloadError):
        return False
    names = {f"{cls.__module__}:{cls.__qualname__}" for cls in type(exc).__mro__}
    return not names.intersection(policy.get("non_retryable", []))


def run_attempt(
    journal: Journal,
    dispatcher: Dispatcher,
    task_id: str,
    attempt: int,
    owner: str,
    celery_tasks: Any = None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> str:
    """Execute one attempt; return ``completed``, ``failed``, ``retry``, ``stale`` or ``dropped``."""
    with journal.holding_connection():  # the claim and the record share one connection
        claim = journal.claim_activity(task_id, attempt, owner)
        if claim is None:
            return "dropped"
        with activity_span(claim):
            run = functools.partial(execute, claim, owner, celery_tasks, max_payload_bytes)
            verdict = supervise(journal, claim, run, owner=owner)
            if verdict.attempt is None:
                return "stale"
            return record_attempt(journal, dispatcher, claim, verdict.attempt)


def record_attempt(journal: Journal, dispatcher: Dispatcher, claim: ActivityClaim, attempt: AttemptResult) -> str:
    """Record an attempt's end, report it and send what it caused; return the journal's status."""
    outcome = journal.finish_activity(claim, result=attempt.result, error=attempt.error, retryable=attempt.retryable)
    report(claim, outcome.status, attempt, outcome.dispatches[0].due if outcome.dispatches else None)
    if outcome.status == "stale":
        log_dropped(claim)
    dispatcher.send(outcome.dispatches)
    return outcome.status


def activity_span(claim: ActivityClaim) -> Any:
    """The tracing span of one attempt, joined to the run's trace."""
    return tracing.span(
        "continuum.activity",
        trace_context=claim.trace_context,
        attributes={
            "continuum.run_id": claim.run_id,
            "continuum.workflow": claim.workflow or None,
            "continuum.activity": claim.name,
            "continuum.attempt": claim.attempt,
        },
    )


def execute(claim: ActivityClaim, owner: str, celery_tasks: Any, max_payload_bytes: int) -> AttemptResult:
    """Run the attempt's function; exceptions become an encoded error (never raised)."""
    telemetry.emit(
        "activity_started",
        run_id=claim.run_id,
        workflow=claim.workflow or None,
        activity=claim.name,
        attempt=claim.attempt,
    )
    fn = _resolve(claim, celery_tasks)
    began = time.perf_counter()
    if fn is None:
        error = {
            "type": "ActivityNotRegistered",
            "module": "continuum_celery.errors",
            "message": f"{claim.kind} {claim.name!r} is not loaded in worker {owner}; "
            "import its module in the worker (Celery `imports` or Continuum(workflow_modules=...)).",
        }
        return AttemptResult(None, error, True, time.perf_counter() - began)
    args = ([claim.compensated_result] if claim.kind == "compensation" else []) + list(claim.args)
    try:
        value = fn(*args, **claim.kwargs)
        result = loads(check_json(value, f"result of activity {claim.name}", max_payload_bytes))
    except Exception as exc:
        return AttemptResult(None, encode_error(exc), _retryable(exc, claim.retry_policy), time.perf_counter() - began)
    return AttemptResult(result, None, True, time.perf_counter() - began)


def report(claim: ActivityClaim, status: str, attempt: AttemptResult, retry_due: datetime | None) -> None:
    """Telemetry and logs for a recorded attempt (``status`` as the journal recorded it)."""
    workflow = claim.workflow or None
    fields: dict[str, Any] = {"activity": claim.name, "attempt": claim.attempt}
    if status == "retry":
        retry_in = (retry_due - datetime.now(timezone.utc)).total_seconds() if retry_due is not None else None
        telemetry.emit("activity_retried", run_id=claim.run_id, workflow=workflow, retry_in=retry_in, **fields)
    elif status in ("completed", "failed"):
        error_field = {"error": attempt.error} if attempt.error is not None else {}
        telemetry.emit(
            f"activity_{status}",
            run_id=claim.run_id,
            workflow=workflow,
            duration=attempt.duration,
            **error_field,
            **fields,
        )
    if attempt.error is not None:
        telemetry.run_logger(__name__, claim.run_id, workflow).warning(
            "activity %s attempt %d of %d failed: %s",
            claim.name,
            claim.attempt,
            claim.max_attempts,
            attempt.error["message"],
        )
