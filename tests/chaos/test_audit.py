"""The audit itself: a journal broken on purpose, one way per count, must show up in that count.

Without this, a wrong query in the audit would report 0 for every scenario and prove nothing.
"""

from __future__ import annotations

import pytest

from continuum_celery.journal.records import NewRun
from tests.chaos.audit import audit
from tests.support.stack import Stack

pytestmark = pytest.mark.chaos

_EVENT = (
    "INSERT INTO continuum_events (run_id, seq, kind, command_id, name, payload, created_at) "
    "VALUES (:r, :s, :k, :c, 'chaos.effect', '{}', now())"
)


def _run(stack: Stack, run_id: str, events: list[tuple[int, str, int | None]], state: str = "completed") -> None:
    """A run whose journal holds run_started (seq 1) and then ``events`` as (seq, kind, command_id)."""
    stack.client().journal.create_run(
        NewRun(id=run_id, workflow="chaos.steps", version_hash="0" * 16, version=1, input={})
    )
    for seq, kind, command_id in events:
        stack.sql(_EVENT, r=run_id, s=seq, k=kind, c=command_id)
    last = max([1] + [seq for seq, _, _ in events])
    stack.sql("UPDATE continuum_runs SET state = :st, last_seq = :l WHERE id = :r", st=state, l=last, r=run_id)


def _task(stack: Stack, run_id: str, key: str) -> None:
    stack.sql(
        "INSERT INTO continuum_activity_tasks (id, run_id, command_id, kind, name, arguments, state, attempt, "
        "max_attempts, retry_policy, idempotency_key, created_at, updated_at, finished_at) VALUES "
        "(:i, :r, 1, 'activity', 'chaos.effect', '{}', 'completed', 1, 3, '{}', :k, now(), now(), "
        "now() - interval '1 s')",
        i=f"{run_id}:1",
        r=run_id,
        k=key,
    )


def test_a_clean_journal_counts_nothing(stack: Stack) -> None:
    _run(stack, "fine", [(2, "activity_scheduled", 1), (3, "activity_completed", 1), (4, "run_completed", None)])
    _task(stack, "fine", "fine:0")
    stack.sql("INSERT INTO test_marks (name, at) VALUES ('exec|fine:0|1', now() - interval '2 s')")
    stack.sql("INSERT INTO test_effects (key) VALUES ('fine:0')")
    result = audit(stack.sql, expected=["fine"])
    result.assert_clean()
    assert (result.effects, result.executions, result.max_attempt) == (1, 1, 1)


def test_every_kind_of_damage_is_counted(stack: Stack) -> None:
    _run(stack, "open", [(2, "activity_scheduled", 1)], state="suspended")
    _run(stack, "twice", [(2, "run_completed", None), (3, "run_failed", None)])
    _run(stack, "gap", [(3, "run_completed", None)])
    _run(stack, "command-twice", [(2, "activity_scheduled", 1), (3, "activity_scheduled", 1), (4, "run_failed", None)])
    _run(stack, "orphan", [(2, "timer_fired", 7), (3, "run_completed", None)])
    _run(stack, "late", [(2, "run_completed", None), (3, "activity_scheduled", 1)])
    _task(stack, "late", "late:0")
    stack.sql("INSERT INTO test_marks (name) VALUES ('exec|dup:0|2'), ('exec|dup:0|2'), ('exec|late:0|1')")

    result = audit(stack.sql, expected=["open", "never-started"])
    assert result.counts() == {
        "lost": 2,
        "completed_twice": 1,
        "seq_gaps": 1,
        "stale_writes": 4,
        "duplicate_effects": 2,
    }
    assert result.lost == ["never-started:missing", "open:suspended"]
    # Two terminal events are also a write after the terminal one.
    assert sorted(result.stale_writes) == [
        "after terminal:late@3",
        "after terminal:twice@3",
        "command twice:command-twice#1x2",
        "outcome without command:orphan@2",
    ]
    assert sorted(result.duplicate_effects) == ["attempt ran 2x:dup:0#2", "ran after completion:late:0#1"]
    with pytest.raises(AssertionError, match="chaos audit failed"):
        result.assert_clean()
