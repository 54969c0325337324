"""An approval: wait a moment (a durable timer), then wait for a human's signal, with a deadline."""

from __future__ import annotations

from typing import Any

from continuum_celery import SignalTimeout, WorkflowContext, activity, workflow


@activity
def notify_approver(request_id: str, approver: str) -> str:
    """Tell the approver a request is waiting."""
    return f"notified {approver} about {request_id}"


@activity
def apply_decision(request_id: str, decision: dict[str, Any]) -> dict[str, Any]:
    """Act on the decision."""
    return {"request": request_id, "approved": bool(decision.get("approved")), "by": decision.get("by")}


@workflow(workflow="approvals.approval_flow", version=1)
def approval_flow(ctx: WorkflowContext, request: dict[str, Any]) -> dict[str, Any]:
    """Notify, pause, then wait for the ``decision`` signal (or time out and reject)."""
    ctx.run(notify_approver, request["id"], request["approver"])
    ctx.sleep(request.get("grace_seconds", 1))
    try:
        decision = ctx.wait_signal("decision", timeout=request.get("timeout_seconds", 3600))
    except SignalTimeout:
        decision = {"approved": False, "by": "timeout"}
    return ctx.run(apply_decision, request["id"], decision)
