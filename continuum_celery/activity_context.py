"""What an activity may ask while it runs: who it is (``activity_info``) and ``heartbeat``.

The engine runs every attempt, inline in a replay task or as a ``continuum.activity``
task, with an :class:`AttemptLink` in a context variable; these functions read it,
so an activity (or a plain ``@app.task`` used as one) cannot tell which path ran it.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from .errors import InvalidArgument
from .serialization import check_json, loads

#: Largest JSON text of one heartbeat's details: progress markers, not payloads.
MAX_HEARTBEAT_BYTES = 64 * 1024


@dataclass(frozen=True)
class ActivityInfo:
    """The attempt running now.

    ``deadline`` is when this attempt times out (start-to-close, UTC; None with no time limit); ``last_heartbeat``
    holds the details of the last heartbeat an earlier attempt of this task recorded
    (None if none did), so a retry can resume where that attempt was.
    """

    run_id: str
    workflow: str
    activity: str
    task_id: str
    attempt: int
    max_attempts: int
    deadline: datetime | None
    heartbeat_timeout: float | None
    last_heartbeat: Any


class AttemptLink(Protocol):
    """What the engine plugs in for the attempt running in this context."""

    info: ActivityInfo

    def beat(self, details: Any) -> None:
        """Record a heartbeat; raises ``ActivityCancelled`` once the attempt should stop."""


_current: ContextVar[AttemptLink | None] = ContextVar("continuum_attempt", default=None)


def current_link() -> ContextVar[AttemptLink | None]:
    """The context variable the engine sets around an attempt (for the engine, not activities)."""
    return _current


def _link(caller: str) -> AttemptLink:
    link = _current.get()
    if link is None:
        raise InvalidArgument(
            f"{caller} was called outside an activity attempt; call it from a function that "
            "a workflow runs with ctx.run / ctx.start_activity."
        )
    return link


def activity_info() -> ActivityInfo:
    """The run, workflow, activity, attempt and deadline of the attempt running now.

    Raises:
        InvalidArgument: not called from inside an activity attempt.
    """
    return _link("activity_info()").info


def heartbeat(details: Any = None) -> None:
    """Say the attempt is alive, optionally with JSON ``details`` of its progress (kept for a retry).

    An activity with ``heartbeat_timeout`` must call this at least that often, or the attempt
    fails and is retried by its policy.

    Raises:
        ActivityCancelled: the run was cancelled, or this attempt was given up (timed out);
            stop: what it returns is not recorded.
        PayloadError: ``details`` is not JSON or larger than :data:`MAX_HEARTBEAT_BYTES`.
        InvalidArgument: not called from inside an activity attempt.
    """
    link = _link("heartbeat()")
    text = check_json(details, f"heartbeat details of {link.info.activity}", MAX_HEARTBEAT_BYTES)
    link.beat(loads(text))
