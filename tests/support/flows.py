"""Workflows and activities the integration tests run in real worker processes.

Effects that must happen exactly once are rows in ``test_effects`` (created by
the harness in the test database), written by the activity itself.
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa

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
        out.append(ctx.run(record_effect, key, spec.get("hold", 0.0), idempotency_key=key))
    return out
