"""An order saga: reserve stock, charge the card, ship; undo what was done when a step fails."""

from __future__ import annotations

from typing import Any

from continuum_celery import RetryPolicy, WorkflowContext, activity, workflow


@activity(retry=RetryPolicy(max_attempts=3, initial_interval=0.2, backoff=2.0))
def reserve_stock(order_id: str, items: list[str]) -> dict[str, Any]:
    """Reserve the items; returns the reservation."""
    return {"reservation": f"res-{order_id}", "items": items}


@reserve_stock.compensate
def release_stock(result: dict[str, Any], order_id: str, items: list[str]) -> None:
    """Undo a reservation."""


@activity(retry=RetryPolicy(max_attempts=3, initial_interval=0.2, backoff=2.0))
def charge(order_id: str, cents: int) -> dict[str, Any]:
    """Charge the customer; returns the payment."""
    return {"payment": f"pay-{order_id}", "cents": cents}


@charge.compensate
def refund(result: dict[str, Any], order_id: str, cents: int) -> None:
    """Refund a payment."""


class CarrierRefused(Exception):
    """The carrier will not take the parcel (not worth retrying)."""


@activity(retry=RetryPolicy(max_attempts=2, initial_interval=0.2, non_retryable=(CarrierRefused,)))
def ship(order_id: str, address: str) -> dict[str, Any]:
    """Book the shipment; an address of "nowhere" is refused."""
    if address == "nowhere":
        raise CarrierRefused(f"no carrier delivers order {order_id} to {address!r}")
    return {"tracking": f"trk-{order_id}"}


@workflow(workflow="orders.order_flow", version=1, saga=True)
def order_flow(ctx: WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
    """Reserve, charge, ship; on failure the saga refunds and releases."""
    reservation = ctx.run(reserve_stock, order["id"], order["items"])
    payment = ctx.run(charge.options(idempotency_key=f"charge-{order['id']}"), order["id"], order["cents"])
    shipment = ctx.run(ship, order["id"], order["address"])
    return {"order": order["id"], **reservation, **payment, **shipment}
