"""Deploy 1 of a workflow, for the version tests: only the version 1 body.

``flows_v2`` is the next deploy of the same logical workflow; a worker that
imports both serves runs of either version.
"""

from __future__ import annotations

from continuum_celery import workflow
from tests.support import version_marks  # noqa: F401 - records version telemetry in test_marks

ORDER = "tests.versions.order"


@workflow(workflow=ORDER, version=1)
def order_v1(ctx, order: dict) -> dict:
    decision = ctx.wait_signal("go")
    return {"body": "v1", "order": order["id"], "decision": decision}
