"""Workflows and plain Celery tasks composed in canvas (chains, chords, link, link_error).

Each plain task records what it received in ``test_marks`` so a test can count
calls and read their arguments back.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from celery import shared_task

from continuum_celery import activity, workflow
from tests.support.flows import _record_effect, effects_engine, mark


class Refused(Exception):
    """The error a failing workflow raises."""


@activity(name="tests.canvas.square")
def square(n: int) -> int:
    return n * n


@workflow(workflow="tests.canvas.squared")
def squared(ctx, n: int) -> int:
    """``n * n`` through an activity; ``n < 0`` fails the run."""
    if n < 0:
        raise Refused(f"no square for {n}")
    return ctx.run(square, n)


@workflow(workflow="tests.canvas.countdown")
def countdown(ctx, n: int) -> str:
    """Continues as new ``n`` times, then completes."""
    return ctx.continue_as_new(n - 1) if n > 0 else "liftoff"


@shared_task(name="tests.canvas.plus_one")
def plus_one(x: int) -> int:
    return x + 1


@shared_task(name="tests.canvas.seen")
def seen(value: Any, tag: str = "seen") -> Any:
    """Records the value it received under ``tag`` (a link, a chain's next task, a chord callback)."""
    mark(f"{tag}:{json.dumps(value)}")
    return value


@shared_task(name="tests.canvas.total")
def total(values: list, tag: str = "total") -> int:
    """A chord callback: records and returns the sum of the header's results."""
    result = sum(values)
    mark(f"{tag}:{result}")
    return result


@shared_task(name="tests.canvas.on_error")
def on_error(request: Any, exc: BaseException, traceback: Any, tag: str = "error") -> None:
    """An errback (Celery's ``(request, exc, traceback)`` form): records the failed task and the error."""
    mark(f"{tag}:{request.id}:{type(exc).__name__}:{exc}")


@shared_task(name="tests.canvas.on_error_id")
def on_error_id(task_id: str) -> None:
    """An errback of the old form (one argument, so Celery sends it as a task): the failed task's id."""
    mark(f"error-id:{task_id}")


# ---- tasks of durable canvases: each attempt is a mark ``ran:<name>``, each effect a row -----------


def _step(name: str, value: Any, hold: float = 0.0) -> Any:
    """Record an attempt of ``name`` and its effect (idempotent); hold on the first attempt only."""
    mark(f"ran:{name}")
    held = marks_named(f"holding:{name}")
    _record_effect(name, 0.0 if held else hold)
    return value


def marks_named(name: str) -> int:
    with effects_engine().begin() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM test_marks WHERE name = :n"), {"n": name}).scalar())


@shared_task(name="tests.canvas.a")
def task_a(x: int) -> int:
    return _step("a", x + 1)


@shared_task(name="tests.canvas.b")
def task_b(x: int, hold: float = 0.0) -> int:
    return _step("b", x * 10, hold)


@shared_task(name="tests.canvas.c")
def task_c(x: int) -> int:
    return _step("c", x * 100)


@shared_task(name="tests.canvas.d")
def task_d(results: list) -> dict:
    return _step("d", {"got": results})


@shared_task(name="tests.canvas.refuse")
def refuse(*args: Any) -> None:
    mark("ran:refuse")
    raise Refused(f"refused {args}")
