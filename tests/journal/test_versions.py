"""Listing runs, and the versions workers serve: parking runs no live worker can replay, and unparking them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from continuum_celery.journal.base import Journal
from continuum_celery.journal.version_rules import STOPPED_AT, stale_versions

from .support import WORKFLOW, claim, replay, start


def test_list_runs_newest_first_with_filters(journal: Journal, travel: Callable[[float], None]) -> None:
    for name in ("a", "b", "c"):
        start(journal, name, workflow=WORKFLOW if name != "b" else "tests.other")
        travel(1)
    claim(journal, "a")
    assert [r.id for r in journal.list_runs()] == ["c", "b", "a"]
    assert [r.id for r in journal.list_runs(workflow=WORKFLOW)] == ["c", "a"]
    assert [r.id for r in journal.list_runs(state="running")] == ["a"]
    assert [r.id for r in journal.list_runs(limit=1, offset=1)] == ["b"]
    created = journal.get_run("b").created_at
    assert [r.id for r in journal.list_runs(created_after=created)] == ["c", "b"]


def test_upserting_a_version_unparks_its_runs(journal: Journal) -> None:
    start(journal)
    journal.release(claim(journal).lease, stuck_reason="unknown_version")
    assert journal.begin_step("run-1", "w1", 30, 0) is None
    assert journal.upsert_versions("host-a", [(WORKFLOW, "h1", 1, "flows")]) == [replay()]
    assert journal.get_run("run-1").stuck_reason is None
    assert journal.upsert_versions("host-b", [(WORKFLOW, "h1", 1, "flows")]) == []
    [entry] = journal.list_versions()
    assert (entry["workflow"], entry["version_hash"], entry["version"], entry["module"]) == (WORKFLOW, "h1", 1, "flows")
    assert sorted(entry["hostnames"]) == ["host-a", "host-b"] and entry["pinned_runs"] == 1
    assert sorted(w["hostname"] for w in entry["workers"]) == ["host-a", "host-b"]
    journal.retract_versions("host-a")
    [entry] = journal.list_versions()  # a stopped worker's rows stay (for `versions prune`), never live again
    seen = {w["hostname"]: w["last_seen_at"] for w in entry["workers"]}
    assert seen["host-a"] == STOPPED_AT and seen["host-b"] > STOPPED_AT
    claim(journal)


def test_versions_are_forgotten_only_while_no_live_worker_and_no_unfinished_run_needs_them(
    journal: Journal, travel: Callable[[float], None]
) -> None:
    start(journal)  # unfinished, on (WORKFLOW, h1)
    journal.upsert_versions("host-a", [(WORKFLOW, "h1", 1, "flows"), (WORKFLOW, "h0", 0, "flows")])
    journal.upsert_versions("host-b", [(WORKFLOW, "h0", 0, "flows")])
    journal.retract_versions("host-a")
    # h1: a run is pinned to it; h0: host-b is live. Nothing goes.
    assert journal.forget_versions([(WORKFLOW, "h1"), (WORKFLOW, "h0")], live_within=60) == []
    assert sorted(e["version_hash"] for e in journal.list_versions()) == ["h0", "h1"]
    travel(120)  # host-b fell silent
    assert journal.forget_versions([(WORKFLOW, "h1"), (WORKFLOW, "h0")], live_within=60) == [(WORKFLOW, "h0")]
    assert [e["version_hash"] for e in journal.list_versions()] == ["h1"]
    journal.upsert_versions("host-a", [(WORKFLOW, "h0", 0, "flows")])  # the code is back: recorded anew
    assert journal.forget_versions([(WORKFLOW, "h0")], live_within=60) == []
    assert sorted(e["version_hash"] for e in journal.list_versions()) == ["h0", "h1"]


def test_stale_versions_have_workers_none_live_and_no_unfinished_runs() -> None:
    now = datetime.now(timezone.utc)
    old, fresh = now - timedelta(minutes=5), now

    def entry(version_hash: str, pinned: int, *seen: datetime) -> dict[str, Any]:
        workers = [{"last_seen_at": at} for at in seen]
        return {"workflow": "w", "version_hash": version_hash, "pinned_runs": pinned, "workers": workers}

    entries = [
        entry("stopped", 0, STOPPED_AT),
        entry("silent", 0, old),
        entry("pinned", 1, STOPPED_AT),
        entry("live", 0, old, fresh),
        entry("runs-only", 0),  # no worker ever recorded it: it has no queue to remove
    ]
    assert stale_versions(entries, now - timedelta(minutes=1)) == [("w", "stopped"), ("w", "silent")]


def test_runs_on_a_version_no_live_worker_serves_are_parked(journal: Journal, travel: Callable[[float], None]) -> None:
    start(journal, "served")
    start(journal, "stranded", workflow="tests.gone")
    assert journal.park_unknown_versions(live_within=60, batch=10) == []  # no worker is live: conclude nothing
    journal.upsert_versions("host-a", [(WORKFLOW, "h1", 1, "flows")])
    assert journal.park_unknown_versions(live_within=60, batch=10, also_live=[("tests.gone", "h1")]) == []
    assert journal.park_unknown_versions(live_within=60, batch=10) == [("tests.gone", "h1", 1)]
    parked = journal.get_run("stranded")
    assert (parked.state, parked.stuck_reason) == ("pending", "unknown_version")
    assert journal.begin_step("stranded", "w1", 30, 0) is None
    assert journal.get_run("served").stuck_reason is None
    travel(120)  # host-a fell silent: nothing can be concluded, and what is parked stays parked
    assert journal.park_unknown_versions(live_within=60, batch=10) == []
    assert journal.get_run("served").stuck_reason is None
    assert journal.upsert_versions("host-b", [("tests.gone", "h1", 1, "flows")]) == [replay("stranded", "tests.gone")]
    claim(journal, "stranded")
