"""An order saga: reserve stock, charge the card, ship; undo what was done when a step fails."""

from __future__ import annotations

from continuum_celery import RetryPolicy, activity, workflow


@activity(retry=RetryPolicy(max_attempts=3, initial_interval=0.2, backoff=2.0))
def reserve_stock(order_id: str, items: list[str]) -> dict:
    """Reserve the items; returns the reservation."""
    return {"reservation": f"res-{order_id}", "items": items}


@reserve_stock.compensate
def release_stock(result: dict, order_id: str, items: list[str]) -> None:
    """Undo a reservation."""


@activity(retry=RetryPolicy(max_attempts=3, initial_interval=0.2, backoff=2.0))
def charge(order_id: str, cents: int) -> dict:
    """Charge the customer; returns the payment."""
    return {"payment": f"pay-{order_id}", "cents": cents}


@charge.compensate
def refund(result: dict, order_id: str, cents: int) -> None:
    """Refund a payment."""


class CarrierRefused(Exception):
    """The carrier will not take the parcel (not worth retrying)."""


@activity(retry=RetryPolicy(max_attempts=2, initial_interval=0.2, non_retryable=(CarrierRefused,)))
def ship(order_id: str, address: str) -> dict:
    """Book the shipment; an address of "nowhere" is refused."""
    if address == "nowhere":
        raise CarrierRefused(f"no carrier delivers order {order_id} to {address!r}")
    return {"tracking": f"trk-{order_id}"}


@workflow(workflow="orders.order_flow", version=1, saga=True)
def order_flow(ctx, order: dict) -> dict:
    """Reserve, charge, ship; on failure the saga refunds and releases."""
    reservation = ctx.run(reserve_stock, order["id"], order["items"])
    payment = ctx.run(charge, order["id"], order["cents"], idempotency_key=f"charge-{order['id']}")
    shipment = ctx.run(ship, order["id"], order["address"])
    return {"order": order["id"], **reservation, **payment, **shipment}
