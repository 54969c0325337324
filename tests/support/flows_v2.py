"""Deploy 2 of the workflow in ``flows_v1``: only the version 2 body (another result shape)."""

from __future__ import annotations

from continuum_celery import workflow
from tests.support import version_marks  # noqa: F401 - records version telemetry in test_marks

ORDER = "tests.versions.order"


@workflow(workflow=ORDER, version=2)
def order_v2(ctx, order: dict) -> dict:
    decision = ctx.wait_signal("go")
    return {"body": "v2", "order": order["id"], "decision": decision, "audited": True}
