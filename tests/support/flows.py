"""Workflows and activities the integration tests run in real worker processes.

Effects that must happen exactly once are rows in ``test_effects`` (created by
the harness in the test database), written by the activity itself. Plain Celery
tasks are ``shared_task``s, so they bind to whichever app imports this module
(the worker's and the test client's) without this module owning an app.
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
from celery import shared_task

from continuum_celery import RetryPolicy, activity, workflow

_engine: sa.Engine | None = None


def effects_engine() -> sa.Engine:
    """The test database, for activities that record their effects."""
    global _engine
    if _engine is None:
        _engine = sa.create_engine(
            os.environ["CONTINUUM_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
        )
    return _engine


@activity
def add(a: int, b: int) -> int:
    return a + b


@activity(retry=RetryPolicy(max_attempts=5, initial_interval=0.5, backoff=1.0), timeout=4)
def record_effect(key: str, hold_seconds: float = 0.0) -> str:
    """Insert one row named ``key`` (unique), after holding for ``hold_seconds`` (a window to kill the worker)."""
    return _record_effect(key, hold_seconds)


@activity(retry=RetryPolicy(max_attempts=5, initial_interval=0.5, backoff=1.0), timeout=600)
def record_effect_patiently(key: str, hold_seconds: float = 0.0) -> str:
    """``record_effect`` with a start-to-close timeout no test waits out; only its first attempt holds."""
    with effects_engine().begin() as conn:
        held = conn.execute(sa.text("SELECT count(*) FROM test_marks WHERE name = :k"), {"k": f"holding:{key}"})
        return _record_effect(key, 0.0 if held.scalar() else hold_seconds)


def _record_effect(key: str, hold_seconds: float) -> str:
    if hold_seconds:
        with effects_engine().begin() as conn:
            conn.execute(sa.text("INSERT INTO test_marks (name) VALUES (:k)"), {"k": f"holding:{key}"})
        time.sleep(hold_seconds)
    with effects_engine().begin() as conn:
        conn.execute(sa.text("INSERT INTO test_effects (key) VALUES (:k) ON CONFLICT DO NOTHING"), {"k": key})
    return key


@workflow(workflow="tests.sequence_and_fanout")
def sequence_and_fanout(ctx, n: int) -> dict:
    total = 0
    for i in range(5):
        total = ctx.run(add, total, i)
    fanned = ctx.gather([ctx.start_activity(add, i, n) for i in range(10)])
    return {"total": total, "fanned": fanned}


@workflow(workflow="tests.effects")
def effects_flow(ctx, spec: dict) -> list:
    out = []
    for i in range(spec.get("steps", 1)):
        key = f"{spec['id']}:{i}"
        act = record_effect_patiently if spec.get("patient") else record_effect
        out.append(ctx.run(act.options(idempotency_key=key), key, spec.get("hold", 0.0)))
    return out


def mark(name: str) -> None:
    """Append a row to ``test_marks`` (what a task saw, for the test to read back)."""
    with effects_engine().begin() as conn:
        conn.execute(sa.text("INSERT INTO test_marks (name) VALUES (:n)"), {"n": name})


@workflow(workflow="tests.add_chain")
def add_chain(ctx, n: int) -> int:
    """``n`` sequential activities, each adding 1."""
    total = 0
    for _ in range(n):
        total = ctx.run(add, total, 1)
    return total


def _busy(seconds: float) -> None:
    """Burn CPU (holding the GIL most of the time) for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


@workflow(workflow="tests.slow_step")
def slow_step(ctx, busy_seconds: float) -> int:
    """A replay step that runs longer than the lease TTL (CPU work between two activities)."""
    first = ctx.run(add, 1, 2)
    if not ctx.is_replaying:  # slow once, not again when another process replays the run
        _busy(busy_seconds)
    return ctx.run(add, first, 1)


@shared_task(name="tests.prepare")
def prepare(n: int) -> dict:
    """An ordinary Celery task that builds a workflow input (the first link of a chain)."""
    return {"n": n, "items": [n, n + 1, n + 2]}


@shared_task(name="tests.remember_run")
def remember_run(run_id: str) -> str:
    """An ordinary Celery task after a workflow start in a chain: records the run id it received."""
    mark(f"chained:{run_id}")
    return run_id


@workflow(workflow="tests.from_canvas")
def from_canvas(ctx, order: dict) -> dict:
    total = order["n"]
    for item in order["items"]:
        total = ctx.run(add, total, item)
    return {"total": total}


@shared_task(name="tests.plain_double")
def plain_double(x: int) -> int:
    """An existing Celery task, not decorated for continuum."""
    return 2 * x


@workflow(workflow="tests.plain_task")
def plain_task_flow(ctx, x: int) -> dict:
    doubled = ctx.run(plain_double, x)
    return {"doubled": doubled, "plus_one": ctx.run(add, doubled, 1)}
