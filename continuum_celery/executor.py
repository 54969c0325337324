"""One activity (or compensation) attempt: claim it, run the function, record the end.

This is what ``continuum.activity`` does. The claim is a compare-and-swap on
the task row, so a duplicate or late Celery delivery of an attempt does nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from . import telemetry, tracing
from .definitions import get_activity
from .dispatch import Dispatcher
from .errors import PayloadError
from .journal.base import ActivityClaim, Journal
from .serialization import DEFAULT_MAX_PAYLOAD_BYTES, check_json, encode_error, loads

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
    claim = journal.claim_activity(task_id, attempt, owner)
    if claim is None:
        return "dropped"
    with tracing.span(
        "continuum.activity",
        trace_context=claim.trace_context,
        attributes={
            "continuum.run_id": claim.run_id,
            "continuum.workflow": claim.workflow or None,
            "continuum.activity": claim.name,
            "continuum.attempt": claim.attempt,
        },
    ):
        return _attempt(journal, dispatcher, claim, owner, celery_tasks, max_payload_bytes)


def _attempt(
    journal: Journal,
    dispatcher: Dispatcher,
    claim: ActivityClaim,
    owner: str,
    celery_tasks: Any,
    max_payload_bytes: int,
) -> str:
    workflow = claim.workflow or None
    fields: dict[str, Any] = {"activity": claim.name, "attempt": claim.attempt}
    telemetry.emit("activity_started", run_id=claim.run_id, workflow=workflow, **fields)
    fn = _resolve(claim, celery_tasks)
    began = time.perf_counter()
    result: Any = None
    error: dict[str, Any] | None = None
    retryable = True
    if fn is None:
        error = {
            "type": "ActivityNotRegistered",
            "module": "continuum_celery.errors",
            "message": f"{claim.kind} {claim.name!r} is not loaded in worker {owner}; "
            "import its module in the worker (Celery `imports` or Continuum(workflow_modules=...)).",
        }
    else:
        args = ([claim.compensated_result] if claim.kind == "compensation" else []) + list(claim.args)
        try:
            value = fn(*args, **claim.kwargs)
            result = loads(check_json(value, f"result of activity {claim.name}", max_payload_bytes))
        except Exception as exc:
            error = encode_error(exc)
            retryable = _retryable(exc, claim.retry_policy)
    duration = time.perf_counter() - began
    outcome = journal.finish_activity(claim, result=result, error=error, retryable=retryable)
    if outcome.status == "retry":
        due = outcome.dispatches[0].due if outcome.dispatches else None
        retry_in = (due - datetime.now(timezone.utc)).total_seconds() if due is not None else None
        telemetry.emit("activity_retried", run_id=claim.run_id, workflow=workflow, retry_in=retry_in, **fields)
    elif outcome.status in ("completed", "failed"):
        error_field = {"error": error} if error is not None else {}
        telemetry.emit(
            f"activity_{outcome.status}",
            run_id=claim.run_id,
            workflow=workflow,
            duration=duration,
            **error_field,
            **fields,
        )
    if error is not None:
        telemetry.run_logger(__name__, claim.run_id, workflow).warning(
            "activity %s attempt %d of %d failed: %s",
            claim.name,
            claim.attempt,
            claim.max_attempts,
            error["message"],
        )
    dispatcher.send(outcome.dispatches)
    return outcome.status
