"""Invariants 1 and 2: fenced leases, and events numbered 1..n even under concurrent claims."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from continuum_celery.errors import LeaseLost
from continuum_celery.events import Kind
from continuum_celery.journal.base import Journal
from continuum_celery.journal.records import Dispatch
from continuum_celery.replay import Complete

from .support import ACTIVITY, activity, assert_numbered, claim, commit, race, replay, side_effect, signal_wait, start


def test_claim_increments_the_token_and_a_second_claim_of_a_held_run_fails(journal: Journal) -> None:
    start(journal)
    first = claim(journal, owner="w1")
    assert first.lease.token == 1
    assert first.run.state == "running" and first.run.lease_owner == "w1"
    assert journal.begin_step("run-1", "w2", 30, 0) is None
    assert journal.get_run("run-1").lease_token == 1


def test_stale_token_writes_raise_lease_lost_and_change_nothing(journal: Journal, state: Callable[[], Any]) -> None:
    start(journal)
    old = claim(journal, owner="old", ttl=-1)  # a lease that is already over: the worker stalled
    new = claim(journal, owner="new")
    assert new.lease.token == old.lease.token + 1
    before = state()

    with pytest.raises(LeaseLost) as lost:
        commit(journal, old, [activity(1, 5)], Complete({"done": True}))
    assert lost.value.run_id == "run-1" and lost.value.token == old.lease.token
    assert "stale" in str(lost.value)
    with pytest.raises(LeaseLost):
        journal.renew(old.lease, 30)
    with pytest.raises(LeaseLost):
        journal.release(old.lease)
    with pytest.raises(LeaseLost):
        journal.release(old.lease, stuck_reason="nondeterminism")
    assert state() == before
    record = journal.get_run("run-1")
    assert (record.state, record.lease_token, record.lease_owner, record.last_seq) == ("running", 2, "new", 1)

    journal.renew(new.lease, 60)
    result = commit(journal, new, [activity(1, 5)])
    assert result.dispatches == [Dispatch("activity", "run-1:1", attempt=1, label=ACTIVITY)]
    assert [e.kind for e in journal.history("run-1")] == [Kind.RUN_STARTED, Kind.ACTIVITY_SCHEDULED]
    assert journal.get_run("run-1").state == "suspended"
    with pytest.raises(LeaseLost):  # a suspended run has no holder: even the last one's token is spent
        commit(journal, new, [], Complete(1))


def test_release_gives_the_run_back_and_parks_it_when_told(journal: Journal) -> None:
    start(journal)
    step = claim(journal)
    journal.release(step.lease)
    assert journal.get_run("run-1").state == "suspended"
    again = claim(journal)  # due at once
    journal.release(again.lease, stuck_reason="unknown_version")
    parked = journal.get_run("run-1")
    assert (parked.state, parked.stuck_reason) == ("suspended", "unknown_version")
    assert journal.begin_step("run-1", "w1", 30, 0) is None


def test_events_are_numbered_without_gap_across_many_steps(journal: Journal) -> None:
    start(journal)
    received = []
    after = 0
    for i in range(12):
        step = claim(journal, after=after)
        received += [e.payload["payload"] for e in step.events if e.kind is Kind.SIGNAL_RECEIVED]
        result = commit(journal, step, [side_effect(2 * i + 1, i), signal_wait(2 * i + 2, "tick")])
        assert not result.runnable_again
        after = result.last_seq
        assert journal.send_signal("run-1", "tick", i) == [replay()]
    received += [e.payload["payload"] for e in claim(journal, after=after).events if e.kind is Kind.SIGNAL_RECEIVED]
    assert received == list(range(12))
    assert assert_numbered(journal) == 1 + 12 * 3


def test_concurrent_claims_of_one_run_have_exactly_one_winner_each_time(journal: Journal) -> None:
    start(journal)
    rounds = 6
    tokens = []
    for i in range(rounds):
        steps = race(4, lambda k: journal.begin_step("run-1", f"w{k}", 30, 0))
        won = [s for s in steps if s is not None]
        assert len(steps) == 4 and len(won) == 1
        tokens.append(won[0].lease.token)
        commit(journal, won[0], [side_effect(i + 1, i)])
        journal.send_signal("run-1", "poke", i)  # makes the run due again
    assert tokens == list(range(1, rounds + 1))
    assert assert_numbered(journal) == 1 + rounds
