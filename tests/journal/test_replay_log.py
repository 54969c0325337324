"""A fresh execution's replay log: the run's latest snapshot plus the events after it, never a gap."""

from __future__ import annotations

from continuum_celery.events import Kind
from continuum_celery.journal.base import Journal
from continuum_celery.snapshots import replayable

from .support import claim, commit, side_effect, signal_wait, start


def test_a_fresh_step_reads_the_snapshot_then_the_events_after_it(journal: Journal) -> None:
    journal.snapshot_every = 10  # type: ignore[attr-defined]  # both adapters read it per commit
    start(journal)
    after = 0
    for i in range(8):
        step = claim(journal, after=after)
        result = commit(journal, step, [side_effect(2 * i + 1, i), signal_wait(2 * i + 2, "tick")])
        after = result.last_seq
        journal.send_signal("run-1", "tick", i)
    fresh = claim(journal)  # a worker without the execution in its cache
    history = journal.history("run-1")
    assert fresh.snapshot_seq > 20  # the snapshot taken when last_seq went past 20
    head = [e for e in fresh.events if e.seq <= fresh.snapshot_seq]
    tail = [e for e in fresh.events if e.seq > fresh.snapshot_seq]
    assert [e.seq for e in tail] == list(range(fresh.snapshot_seq + 1, len(history) + 1))
    expected = [e for e in history if e.seq <= fresh.snapshot_seq and replayable(e)]
    assert [(e.seq, e.kind, e.command_id, e.name) for e in head] == [
        (e.seq, e.kind, e.command_id, e.name) for e in expected
    ]
    assert [e.payload["payload"] for e in fresh.events if e.kind is Kind.SIGNAL_RECEIVED] == list(range(8))
