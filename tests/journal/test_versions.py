"""Listing runs, and the versions workers serve: parking runs no live worker can replay, and unparking them."""

from __future__ import annotations

from collections.abc import Callable

from continuum_celery.journal.base import Journal

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
    assert [e["hostnames"] for e in journal.list_versions()] == [["host-b"]]
    claim(journal)


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
