"""``commit_step(inline=...)``: the stepper runs a lone activity itself, claimed in the decision's transaction."""

from __future__ import annotations

from continuum_celery.events import Kind
from continuum_celery.journal.base import Journal

from .support import ACTIVITY, activity, claim, replay, start


def test_the_inline_activity_is_claimed_by_the_lease_owner_and_not_dispatched(journal: Journal) -> None:
    start(journal)
    step = claim(journal, owner="w1")
    result = journal.commit_step(
        step.lease, [activity(1, 2, 3), activity(2, 4)], None, wake_seq=step.wake_seq, child_versions={}, inline=1
    )
    assert result.inline_claim is not None
    assert (result.inline_claim.task_id, result.inline_claim.attempt, result.inline_claim.args) == (
        "run-1:1",
        1,
        [2, 3],
    )
    # The other activity still goes through Celery; the inline one is never dispatched.
    assert [d.id for d in result.dispatches] == ["run-1:2"]
    assert journal.claim_activity("run-1:1", 1, "w2") is None  # already running: a stray delivery does nothing
    done = journal.finish_activity(result.inline_claim, result=5)
    assert done.status == "completed" and done.dispatches == [replay()]
    outcome = claim(journal, after=step.run.last_seq + 2).events[-1]
    assert (outcome.kind, outcome.command_id, outcome.name, outcome.payload["result"]) == (
        Kind.ACTIVITY_COMPLETED,
        1,
        ACTIVITY,
        5,
    )


def test_without_inline_every_activity_is_dispatched(journal: Journal) -> None:
    start(journal)
    step = claim(journal)
    result = journal.commit_step(step.lease, [activity(1)], None, wake_seq=step.wake_seq, child_versions={})
    assert result.inline_claim is None
    assert [d.id for d in result.dispatches] == ["run-1:1"]
