"""``runs show`` describes every event kind in words, keyed by ``Kind``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from continuum_celery.cli_runs import DESCRIPTIONS, describe_event
from continuum_celery.events import Kind
from continuum_celery.journal.views import TimelineEntry


def entry(kind: str, payload: dict[str, object], name: str | None = None, command_id: int | None = None) -> Any:
    return TimelineEntry(1, kind, command_id, name, payload, datetime.now(timezone.utc))


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_has_a_description(kind: Kind) -> None:
    assert kind in DESCRIPTIONS, f"add a description of {kind.value} to cli_runs.DESCRIPTIONS"
    line = describe_event(entry(kind.value, {}, name="shop.charge"))
    assert line and kind.value not in line  # words, not the raw kind


def test_a_command_names_its_number_and_its_arguments() -> None:
    line = describe_event(entry("activity_scheduled", {"args": ["A-1", 1299]}, name="shop.charge", command_id=3))
    assert line == 'scheduled charge("A-1", 1299) [cmd 3]'


def test_a_kind_from_a_newer_release_is_shown_raw() -> None:
    assert describe_event(entry("run_paused", {"by": "ops"}, name="x")) == 'run_paused x {"by": "ops"}'
