"""What a start task's request becomes in the journal: its canvas fields, as JSON, or a clear refusal."""

from __future__ import annotations

import pytest
from celery.app.task import Context

from continuum_celery.canvas import link_of
from continuum_celery.errors import PayloadError

NEXT = {"task": "next", "args": [], "kwargs": {}, "options": {}, "subtask_type": None, "immutable": False}


def test_the_canvas_fields_of_a_request_are_kept_and_its_arguments_are_not() -> None:
    request = Context(
        id="t-1",
        task="continuum.start",
        shadow="shop.order_flow",
        args=[{"card": "4111"}],
        kwargs={"workflow": "shop.order_flow"},
        callbacks=[NEXT],
        chain=[NEXT],
        chord=NEXT,
        group="g-1",
        group_index=3,
        root_id="root",
        delivery_info={"routing_key": "celery", "exchange": "", "redelivered": False},
    )
    link = link_of(request, 1_000_000)
    assert link.task_id == "t-1"
    assert link.request["task"] == "shop.order_flow"  # the workflow's name, as monitors show it
    assert (link.request["callbacks"], link.request["chain"], link.request["chord"]) == ([NEXT], [NEXT], NEXT)
    assert (link.request["group"], link.request["group_index"], link.request["root_id"]) == ("g-1", 3, "root")
    assert link.request["delivery_info"] == {"routing_key": "celery", "exchange": ""}
    assert "args" not in link.request and "kwargs" not in link.request  # the input stays in the run only


def test_a_request_whose_canvas_is_not_json_is_refused() -> None:
    request = Context(id="t-2", task="continuum.start", callbacks=[{"task": "next", "args": [{1, 2}]}])
    with pytest.raises(PayloadError, match="canvas of start task t-2"):
        link_of(request, 1_000_000)
