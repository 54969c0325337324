"""Activities that overrun, heartbeat, stall or outlive their run, for the liveness tests (both paths)."""

from __future__ import annotations

import time

from celery import shared_task

from continuum_celery import (
    ActivityCancelled,
    ActivityFailed,
    RetryPolicy,
    activity,
    activity_info,
    heartbeat,
    workflow,
)
from tests.support.flows import mark

QUICK_RETRY = RetryPolicy(max_attempts=2, initial_interval=0.2, backoff=1.0)


@activity(retry=QUICK_RETRY, timeout=2)
def overrun(key: str, seconds: float) -> str:
    """Sleeps past its 2 s timeout on every attempt; marks when it starts and when it finally returns."""
    attempt = activity_info().attempt
    mark(f"start:{key}:{attempt}")
    time.sleep(seconds)
    mark(f"end:{key}:{attempt}")
    return key


@workflow(workflow="tests.liveness.timeout")
def timeout_flow(ctx, spec: dict) -> dict:
    try:
        return {"result": ctx.run(overrun.options(idempotency_key=spec["key"]), spec["key"], spec["seconds"])}
    except ActivityFailed as exc:
        return {"error": exc.error["type"], "message": exc.error["message"], "attempts": exc.attempts}


@activity(retry=RetryPolicy(max_attempts=1), timeout=60)
def sleeper(key: str, seconds: float) -> str:
    mark(f"start:{key}")
    time.sleep(seconds)
    mark(f"end:{key}")
    return key


@activity
def cleanup(key: str) -> None:
    mark(f"cleanup:{key}")


@workflow(workflow="tests.liveness.cancel")
def cancel_flow(ctx, spec: dict) -> str:
    try:
        return ctx.run(sleeper.options(idempotency_key=spec["key"]), spec["key"], spec["seconds"])
    finally:
        ctx.run(cleanup, spec["key"])  # the body's cleanup, after the cancel reached it


@activity(retry=RetryPolicy(max_attempts=1), timeout=120)
def beater(key: str, beats: int) -> int:
    """Heartbeats once a second; marks each beat, and the ActivityCancelled that stops it."""
    for i in range(beats):
        try:
            heartbeat({"beat": i})
        except ActivityCancelled as exc:
            mark(f"cancelled:{key}:{exc.reason}")
            raise
        mark(f"beat:{key}")
        time.sleep(1)
    return beats


@workflow(workflow="tests.liveness.beats")
def beats_flow(ctx, spec: dict) -> int:
    return ctx.run(beater, spec["key"], spec["beats"])


@activity(retry=QUICK_RETRY, timeout=120, heartbeat_timeout=2)
def stalls(key: str) -> dict:
    """The first attempt records its progress, then stops heartbeating; the retry resumes from it."""
    info = activity_info()
    if info.attempt == 1:
        heartbeat({"rows": 1200})
        mark(f"stalled:{key}")
        time.sleep(10)
        mark(f"late:{key}")
        return {"attempt": 1}
    return {
        "attempt": info.attempt,
        "resumed_from": info.last_heartbeat,
        "activity": info.activity,
        "workflow": info.workflow,
        "run_id": info.run_id,
    }


@workflow(workflow="tests.liveness.stall")
def stall_flow(ctx, key: str) -> dict:
    return ctx.run(stalls, key)


@shared_task(name="tests.liveness.plain_info")
def plain_info(x: int) -> dict:
    """A plain Celery task used as an activity: it has the same context as any activity."""
    info = activity_info()
    heartbeat({"x": x})
    return {"activity": info.activity, "attempt": info.attempt, "run_id": info.run_id, "x": x}


@workflow(workflow="tests.liveness.plain")
def plain_flow(ctx, x: int) -> dict:
    return ctx.run(plain_info, x)


@activity(queue="nowhere-queue")
def elsewhere() -> None:
    """Routed to a queue no test worker consumes."""


@workflow(workflow="tests.liveness.elsewhere")
def elsewhere_flow(ctx, _: None) -> None:
    ctx.run(elsewhere)


@activity
def book(key: str) -> str:
    mark(f"book:{key}")
    return f"booking-{key}"


@book.compensate
def unbook(booking: str, key: str) -> None:
    mark(f"unbook:{key}:{booking}")


@workflow(workflow="tests.liveness.deadline", saga=True, timeout=4)
def deadline_flow(ctx, spec: dict) -> str:
    """Books, then waits past its 4 s workflow timeout: asleep, or inside a long activity."""
    ctx.run(book, spec["key"])
    if spec.get("sleep"):
        ctx.sleep(3600)
    return ctx.run(sleeper, spec["key"], spec.get("seconds", 12.0))


@workflow(workflow="tests.liveness.nap")
def nap_flow(ctx, seconds: float) -> str:
    """No timeout of its own: sleeps ``seconds`` durably, books nothing."""
    ctx.sleep(seconds)
    return "woke"


@activity(retry=RetryPolicy(max_attempts=10, initial_interval=0.2, backoff=1.0), timeout=2, schedule_to_close=5)
def keeps_overrunning(key: str) -> str:
    mark(f"try:{key}")
    time.sleep(6)
    return key


@workflow(workflow="tests.liveness.closing")
def closing_flow(ctx, key: str) -> dict:
    try:
        return {"result": ctx.run(keeps_overrunning, key)}
    except ActivityFailed as exc:
        return {"error": exc.error["type"], "message": exc.error["message"], "attempts": exc.attempts}
