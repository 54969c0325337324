"""New run ids: UUIDs that grow with time (the layout of UUIDv7), unique, and valid run ids."""

from __future__ import annotations

import time
import uuid

from continuum_celery.ids import new_run_id, validate_run_id


def test_a_new_run_id_is_a_version_7_uuid_and_a_valid_run_id() -> None:
    run_id = new_run_id()
    parsed = uuid.UUID(run_id)
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert str(parsed) == run_id and validate_run_id(run_id) == run_id


def test_new_run_ids_sort_by_the_millisecond_they_were_made_in() -> None:
    before = time.time_ns() // 1_000_000
    first = new_run_id()
    made_in = uuid.UUID(first).int >> 80
    while time.time_ns() // 1_000_000 <= made_in:  # until the clock is in the next millisecond
        pass
    second = new_run_id()
    after = time.time_ns() // 1_000_000
    assert first < second  # as text too: the journal's indexes compare them so
    stamps = [uuid.UUID(i).int >> 80 for i in (first, second)]
    assert before <= stamps[0] < stamps[1] <= after


def test_new_run_ids_made_in_one_millisecond_differ() -> None:
    assert len({new_run_id() for _ in range(10_000)}) == 10_000
