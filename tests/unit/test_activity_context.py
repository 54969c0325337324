"""``activity_info()`` and ``heartbeat()``: refused outside an attempt; details checked before they reach the engine."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from continuum_celery import ActivityInfo, InvalidArgument, PayloadError, activity_info, heartbeat
from continuum_celery.activity_context import MAX_HEARTBEAT_BYTES, current_link

INFO = ActivityInfo(
    run_id="r1",
    workflow="wf",
    activity="act",
    task_id="r1:1",
    attempt=2,
    max_attempts=5,
    deadline=datetime(2030, 1, 1, tzinfo=timezone.utc),
    heartbeat_timeout=10.0,
    last_heartbeat={"rows": 3},
)


class Link:
    """What the engine plugs in for an attempt (a fake: this tests the module's own checks)."""

    info = INFO

    def __init__(self) -> None:
        self.beats: list[Any] = []

    def beat(self, details: Any) -> None:
        self.beats.append(details)


def test_outside_an_attempt_both_are_refused_with_the_fix() -> None:
    with pytest.raises(InvalidArgument, match=r"activity_info\(\) was called outside an activity attempt"):
        activity_info()
    with pytest.raises(InvalidArgument, match="ctx.run / ctx.start_activity"):
        heartbeat({"rows": 1})


def test_inside_an_attempt_details_are_json_and_bounded() -> None:
    link = Link()
    token = current_link().set(link)
    try:
        assert activity_info() is INFO
        heartbeat()
        heartbeat(("a", 1))
        with pytest.raises(PayloadError, match="heartbeat details of act"):
            heartbeat({"at": datetime.now(timezone.utc)})
        with pytest.raises(PayloadError, match=f"over the {MAX_HEARTBEAT_BYTES}-byte limit"):
            heartbeat("x" * MAX_HEARTBEAT_BYTES)
    finally:
        current_link().reset(token)
    assert link.beats == [None, ["a", 1]]  # as the journal will hand them back; refused ones never sent
