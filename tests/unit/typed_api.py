"""Type-checked by ``test_activity_options.py`` (mypy --strict): what the public API infers, and what it refuses.

Never imported by the suite. Each ``# type: ignore[...]`` marks a call mypy must refuse;
``--warn-unused-ignores`` fails the check should it be accepted one day.
"""

from __future__ import annotations

from typing import Any, assert_type

from continuum_celery import ActivityFuture, ChildHandle, WorkflowContext, activity, workflow


@activity
def charge(order_id: str, cents: int, *, currency: str = "EUR") -> dict[str, int]:
    return {"cents": cents}


@activity(queue="shipping")
def ship(order_id: str) -> str:
    return order_id


@workflow
def invoice(ctx: WorkflowContext, cents: int) -> int:
    return cents


@workflow
def order(ctx: WorkflowContext, spec: dict[str, Any]) -> int:
    assert_type(ctx.run(charge, "A-1", 100), dict[str, int])
    assert_type(ctx.run(charge, "A-1", 100, currency="USD"), dict[str, int])
    assert_type(ctx.run(charge.options(queue="eu", idempotency_key="A-1"), "A-1", 100), dict[str, int])
    assert_type(ctx.run(charge.options(queue="eu").options(timeout=30), "A-1", 100), dict[str, int])
    assert_type(ctx.start_activity(ship, "A-1"), ActivityFuture[str])
    assert_type(ctx.start_activity(ship, "A-1").result(), str)
    assert_type(ctx.start_child(invoice, 100), ChildHandle[int])
    ctx.run(charge, "A-1", "100")  # type: ignore[call-overload]
    ctx.run(charge.options(queue="eu"), 1, 100)  # type: ignore[call-overload]
    ctx.run(ship)  # type: ignore[call-overload]
    ctx.run(charge, "A-1", 100, queue="eu")  # type: ignore[call-arg]
    charge.options(queue="eu", currency="USD")  # type: ignore[call-arg]
    return ctx.start_child(invoice, 100).result()
