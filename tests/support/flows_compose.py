"""Workflows for the composition tests: sagas, children, continue-as-new, cancellation, snapshots.

Activities record what they do in the harness tables: ``test_marks`` gets one
row per attempt (so a test can count invocations and see their order),
``test_effects`` one row per effect (its primary key makes a repeat visible).
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from continuum_celery import RetryPolicy, RunCancelled, activity, workflow
from tests.support.flows import effects_engine

FAST_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.1, backoff=1.0)


def mark(name: str) -> None:
    """Append one row to ``test_marks`` (an attempt, in order)."""
    with effects_engine().begin() as conn:
        conn.execute(sa.text("INSERT INTO test_marks (name) VALUES (:n)"), {"n": name})


def effect(key: str) -> None:
    """Insert ``key`` into ``test_effects``; a second insert of one key is an error (exactly-once check)."""
    with effects_engine().begin() as conn:
        conn.execute(sa.text("INSERT INTO test_effects (key) VALUES (:k)"), {"k": key})


class StepRefused(Exception):
    """A saga step that always fails."""


# ---- sagas -------------------------------------------------------------------------------


@activity(name="tests.compose.book", retry=FAST_RETRY)
def book(order: str, step: int, fail: bool = False) -> dict:
    """Saga step ``step`` of ``order``; ``fail`` makes every attempt raise."""
    mark(f"do:{order}:{step}")
    if fail:
        raise StepRefused(f"step {step} of {order} is refused")
    effect(f"do:{order}:{step}")
    return {"booking": f"{order}-{step}"}


@book.compensate
def unbook(result: dict, order: str, step: int, fail: bool = False) -> str:
    """Undo one step: receives the step's result and arguments."""
    mark(f"undo:{order}:{step}")
    effect(f"undo:{order}:{step}:{result['booking']}")
    return f"undone {result['booking']}"


@activity(name="tests.compose.lock", retry=FAST_RETRY)
def lock(order: str) -> str:
    mark(f"do:{order}:lock")
    return f"lock-{order}"


@lock.compensate(retry=RetryPolicy(max_attempts=2, initial_interval=0.1))
def unlock(result: str, order: str) -> None:
    """A compensation that never succeeds (with its own retry policy of 2 attempts)."""
    mark(f"undo:{order}:lock")
    raise RuntimeError(f"cannot release {result}")


@workflow(workflow="tests.compose.four_step_saga", saga=True)
def four_step_saga(ctx, order: str) -> list:
    done = [ctx.run(book, order, 1), ctx.run(book, order, 2)]
    done.append(ctx.run(book, order, 3, fail=True))
    done.append(ctx.run(book, order, 4))
    return done


@workflow(workflow="tests.compose.stuck_compensation", saga=True)
def stuck_compensation(ctx, order: str) -> None:
    ctx.run(lock, order)
    ctx.run(book, order, 1)
    ctx.run(book, order, 2, fail=True)


# ---- children ----------------------------------------------------------------------------


@activity(name="tests.compose.square")
def square(n: int) -> int:
    return n * n


@workflow(workflow="tests.compose.child")
def child_flow(ctx, n: int) -> int:
    value = ctx.run(square, n)
    if n == 13:
        raise ValueError(f"child {n} refuses to finish")
    return value


@workflow(workflow="tests.compose.parent")
def parent_flow(ctx, count: int) -> list:
    handles = [ctx.start_child(child_flow, i) for i in range(count)]
    results = ctx.gather(handles, return_exceptions=True)
    out = []
    for handle, result in zip(handles, results, strict=True):
        if isinstance(result, Exception):
            out.append({"failed": type(result).__name__, "run_id": getattr(result, "run_id", None)})
        else:
            out.append({"value": result, "run_id": handle.id})
    return out


# ---- continue-as-new ---------------------------------------------------------------------


@activity(name="tests.compose.increment")
def increment(n: int) -> int:
    return n + 1


@workflow(workflow="tests.compose.chain")
def chain_flow(ctx, state: dict) -> dict:
    n = ctx.run(increment, state["n"])
    if n < state["until"]:
        return ctx.continue_as_new({"n": n, "until": state["until"]})
    return {"n": n, "run_id": ctx.run_id}


@workflow(workflow="tests.compose.chain_parent")
def chain_parent(ctx, until: int) -> dict:
    child = ctx.start_child(chain_flow, {"n": 0, "until": until})
    return {"child": child.id, "result": child.result()}


# ---- cancellation ------------------------------------------------------------------------


@activity(name="tests.compose.hold", retry=FAST_RETRY)
def hold(key: str, seconds: float) -> str:
    """Mark the start, hold, then record the effect (a window for a cancel to land in)."""
    mark(f"start:{key}")
    time.sleep(seconds)
    effect(key)
    return key


@workflow(workflow="tests.compose.busy_child")
def busy_child(ctx, spec: dict) -> list:
    return [ctx.run(hold, f"{spec['key']}:{i}", spec["hold"]) for i in range(spec["steps"])]


@workflow(workflow="tests.compose.sleepy_parent")
def sleepy_parent(ctx, spec: dict) -> list:
    kids = [ctx.start_child(busy_child, {"key": f"{spec['key']}:{c}", **spec["child"]}) for c in "ab"]
    ctx.sleep(3600)
    return ctx.gather(kids)


@workflow(workflow="tests.compose.cleanup_on_cancel")
def cleanup_on_cancel(ctx, key: str) -> None:
    try:
        ctx.wait_signal("never")
    except RunCancelled:
        ctx.run(book, key, 99)
        raise


@workflow(workflow="tests.compose.saga_cancelled", saga=True)
def saga_cancelled(ctx, order: str) -> None:
    ctx.run(book, order, 1)
    ctx.sleep(3600)


@workflow(workflow="tests.compose.continue_then_sleep")
def continue_then_sleep(ctx, n: int) -> None:
    if n == 0:
        return ctx.continue_as_new(1)
    ctx.sleep(3600)


@workflow(workflow="tests.compose.quick")
def quick(ctx, n: int) -> int:
    return ctx.run(square, n)


# ---- long histories and snapshots --------------------------------------------------------


@activity(name="tests.compose.tick", retry=RetryPolicy(max_attempts=1))
def tick(i: int) -> int:
    return i


@workflow(workflow="tests.compose.many_steps")
def many_steps(ctx, spec: dict) -> dict:
    """``spec["steps"]`` activities in sequence; pauses on signal ``at-<k>`` after step k in ``spec["pauses"]``."""
    total = 0
    pauses = set(spec.get("pauses", ()))
    for i in range(1, spec["steps"] + 1):
        total += ctx.run(tick, i)
        if i in pauses:
            ctx.wait_signal(f"at-{i}")
    return {"total": total}


@workflow(workflow="tests.compose.mixed_history")
def mixed_history(ctx, spec: dict) -> dict:
    """Every kind of command, so a replay from a snapshot has each kind to reproduce."""
    seen = []
    token = str(ctx.uuid4())
    for i in range(spec["rounds"]):
        seen.append(ctx.run(tick, i))
        if i % 5 == 0:
            seen.append(ctx.start_child(child_flow, i).result())
        if i % 7 == 0:
            ctx.sleep(0.05)
        if ctx.patched("mixed-v2"):
            seen.append(-1)
    started = ctx.now().isoformat()
    got = ctx.wait_signal("finish")
    return {"seen": seen, "token": token, "started": started, "signal": got, "uuid_again": str(ctx.uuid4())}
