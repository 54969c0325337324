"""Run and activity-task states, defined once.

A run moves ``pending`` -> ``running`` <-> ``suspended`` -> one of the
terminal states, which it never leaves. An activity task row (an activity or a
compensation) moves ``scheduled`` -> ``running`` -> ``completed`` | ``failed``
| ``cancelled``, back to ``scheduled`` for a retry.
"""

from __future__ import annotations

PENDING = "pending"
RUNNING = "running"
SUSPENDED = "suspended"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
CONTINUED = "continued"

#: Every state a run row may hold (the table's CHECK constraint).
RUN_STATES = (PENDING, RUNNING, SUSPENDED, COMPLETED, FAILED, CANCELLED, CONTINUED)
#: States a run can be claimed from (when due and not parked).
RUNNABLE = (PENDING, SUSPENDED)
#: States a run never leaves.
TERMINAL = (COMPLETED, FAILED, CANCELLED, CONTINUED)
#: States of a run that ended for good: what follows it (its canvas links) is due.
ENDED = (COMPLETED, FAILED, CANCELLED)
#: States of a run that has not ended.
UNFINISHED = (PENDING, RUNNING, SUSPENDED)

TASK_SCHEDULED = "scheduled"
TASK_RUNNING = "running"
#: Every state an activity task row may hold.
TASK_STATES = (TASK_SCHEDULED, TASK_RUNNING, COMPLETED, FAILED, CANCELLED)
#: States of a task row that will not run again.
TASK_FINAL = (COMPLETED, FAILED, CANCELLED)


def is_terminal(state: str) -> bool:
    """True for a run state that never changes again."""
    return state in TERMINAL
