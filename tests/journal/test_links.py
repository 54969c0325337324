"""Canvas links: stored with a run's start, due once it ends, claimed for a while, sent once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from continuum_celery.errors import RunConflict
from continuum_celery.journal.base import Journal
from continuum_celery.journal.records import CanvasLink
from continuum_celery.replay import Complete, ContinueAsNew, Fail

from .support import claim, commit, new_run

REQUEST = {"callbacks": [{"task": "next", "args": [], "kwargs": {}}], "chord": None, "group": None}
ERROR = {"type": "ValueError", "module": "builtins", "message": "boom"}


def _start(journal: Journal, run_id: str, task_id: str, input: Any = None) -> bool:
    _, created = journal.create_run(new_run(run_id, input, link=CanvasLink(task_id, REQUEST)))
    return created


def _end(journal: Journal, run_id: str, outcome: Any) -> None:
    commit(journal, claim(journal, run_id), [], outcome, continue_version=("h1", 1))


def test_a_link_is_due_when_its_run_ends_and_goes_out_once(journal: Journal) -> None:
    assert _start(journal, "r1", "t1")
    assert not _start(journal, "r1", "t1")  # a redelivered start adds nothing
    assert not _start(journal, "r1", "t2")  # a second canvas waiting for the same run
    assert journal.claim_links(batch=10, hold=60) == []  # the run has not ended
    _end(journal, "r1", Complete({"total": 3}))

    links = journal.claim_links(run_id="r1", batch=10, hold=60)
    assert [(lk.task_id, lk.run_id, lk.state, lk.result, lk.request) for lk in links] == [
        ("t1", "r1", "completed", {"total": 3}, REQUEST),
        ("t2", "r1", "completed", {"total": 3}, REQUEST),
    ]
    assert journal.claim_links(batch=10, hold=60) == []  # claimed: no other sender takes them
    journal.links_sent(["t1", "t2"])
    assert journal.claim_links(batch=10, hold=60) == []


def test_a_claim_that_is_never_marked_sent_is_taken_again_after_its_hold(
    journal: Journal, travel: Callable[[float], None]
) -> None:
    _start(journal, "r1", "t1")
    _end(journal, "r1", Fail(ERROR))
    [first] = journal.claim_links(batch=10, hold=30)
    assert (first.state, first.error, first.workflow) == ("failed", ERROR, new_run("r1").workflow)
    travel(10)
    assert journal.claim_links(batch=10, hold=30) == []
    travel(25)
    [again] = journal.claim_links(batch=10, hold=30)
    assert again.task_id == "t1"
    journal.links_sent(["t1"])
    travel(60)
    assert journal.claim_links(batch=10, hold=30) == []


def test_a_link_follows_continue_as_new_to_the_last_run(journal: Journal) -> None:
    _start(journal, "r1", "t1")
    _end(journal, "r1", ContinueAsNew({"n": 2}))
    assert journal.claim_links(run_id="r1", batch=10, hold=60) == []
    successor = journal.continued_to("r1")
    assert successor is not None
    _end(journal, successor, Complete("last"))
    [link] = journal.claim_links(run_id=successor, batch=10, hold=60)
    assert (link.task_id, link.run_id, link.result) == ("t1", successor, "last")


def test_a_conflicting_start_stores_no_link(journal: Journal, state: Callable[[], Any]) -> None:
    _start(journal, "r1", "t1", {"a": 1})
    before = state()
    with pytest.raises(RunConflict):
        _start(journal, "r1", "t2", {"a": 2})
    assert state() == before


def test_claims_take_at_most_a_batch(journal: Journal) -> None:
    for i in range(5):
        _start(journal, f"r{i}", f"t{i}")
        _end(journal, f"r{i}", Complete(i))
    first = journal.claim_links(batch=3, hold=60)
    rest = journal.claim_links(batch=3, hold=60)
    assert len(first) == 3 and len(rest) == 2
    assert {lk.task_id for lk in first + rest} == {f"t{i}" for i in range(5)}


def test_the_sweep_finds_a_link_across_several_continuations_in_one_claim(journal: Journal) -> None:
    _start(journal, "r1", "t1")
    _end(journal, "r1", ContinueAsNew({"n": 2}))
    second = journal.continued_to("r1")
    assert second is not None
    _end(journal, second, ContinueAsNew({"n": 3}))
    third = journal.continued_to(second)
    assert third is not None
    _end(journal, third, Fail(ERROR))
    [link] = journal.claim_links(batch=10, hold=60)  # nobody moved the link after the first continuation
    assert (link.task_id, link.run_id, link.state, link.error) == ("t1", third, "failed", ERROR)
