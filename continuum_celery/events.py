"""The vocabulary of a run's journal: event kinds and the event record.

Events split in two streams. *Commands* are written by the workflow code's own
decisions (schedule an activity, start a timer, read the clock); on replay the
code must issue them again in the same order. *Outcomes* are facts from outside
(an activity finished, a timer fired, a signal arrived); on replay they are
revealed to the code one at a time, in journal order, only when it waits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Kind(str, Enum):
    """Every event kind a journal can hold."""

    # outcomes: facts the code observes
    RUN_STARTED = "run_started"
    ACTIVITY_COMPLETED = "activity_completed"
    ACTIVITY_FAILED = "activity_failed"
    TIMER_FIRED = "timer_fired"
    SIGNAL_RECEIVED = "signal_received"
    SIGNAL_TIMED_OUT = "signal_timed_out"
    CHILD_COMPLETED = "child_completed"
    CHILD_FAILED = "child_failed"
    CHILD_CANCELLED = "child_cancelled"
    COMPENSATION_COMPLETED = "compensation_completed"
    COMPENSATION_FAILED = "compensation_failed"
    CANCEL_REQUESTED = "cancel_requested"
    RUN_TIMED_OUT = "run_timed_out"
    # commands: the code's own decisions
    ACTIVITY_SCHEDULED = "activity_scheduled"
    TIMER_SCHEDULED = "timer_scheduled"
    SIGNAL_WAIT = "signal_wait"
    CHILD_STARTED = "child_started"
    SIDE_EFFECT = "side_effect"
    PATCH_MARKER = "patch_marker"
    COMPENSATION_SCHEDULED = "compensation_scheduled"
    # terminal records
    RUN_COMPLETED = "run_completed"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    RUN_CONTINUED = "run_continued"
    # audit notes: operator actions; replay ignores them
    RETRY_REQUESTED = "retry_requested"


OUTCOMES = frozenset(
    {
        Kind.RUN_STARTED,
        Kind.ACTIVITY_COMPLETED,
        Kind.ACTIVITY_FAILED,
        Kind.TIMER_FIRED,
        Kind.SIGNAL_RECEIVED,
        Kind.SIGNAL_TIMED_OUT,
        Kind.CHILD_COMPLETED,
        Kind.CHILD_FAILED,
        Kind.CHILD_CANCELLED,
        Kind.COMPENSATION_COMPLETED,
        Kind.COMPENSATION_FAILED,
        Kind.CANCEL_REQUESTED,
        Kind.RUN_TIMED_OUT,
    }
)
COMMANDS = frozenset(
    {
        Kind.ACTIVITY_SCHEDULED,
        Kind.TIMER_SCHEDULED,
        Kind.SIGNAL_WAIT,
        Kind.CHILD_STARTED,
        Kind.SIDE_EFFECT,
        Kind.PATCH_MARKER,
        Kind.COMPENSATION_SCHEDULED,
    }
)
TERMINAL_EVENTS = frozenset({Kind.RUN_COMPLETED, Kind.RUN_FAILED, Kind.RUN_CANCELLED, Kind.RUN_CONTINUED})


@dataclass(frozen=True)
class Event:
    """One journal entry of a run.

    Attributes:
        seq: position in the run's journal, 1..n without gaps.
        kind: what happened.
        command_id: the code's command this event belongs to (None for run-level events).
        name: activity / signal / child workflow / patch name, where one applies.
        payload: JSON details (arguments, result, error, fire time...).
    """

    seq: int
    kind: Kind
    command_id: int | None = None
    name: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_outcome(self) -> bool:
        return self.kind in OUTCOMES

    @property
    def is_command(self) -> bool:
        return self.kind in COMMANDS


@dataclass(frozen=True)
class NewEvent:
    """An event the engine decided to append; the journal assigns its ``seq``."""

    kind: Kind
    command_id: int | None = None
    name: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InboxSignal:
    """A signal waiting in a run's inbox, not consumed yet; ``id`` orders arrivals."""

    id: int
    name: str
    payload: Any


def first_signal(inbox: list[InboxSignal], name: str | None) -> InboxSignal | None:
    """The signal a wait on ``name`` takes from ``inbox``: the earliest one of that name."""
    return next((s for s in inbox if s.name == name), None)


def received(signal: InboxSignal) -> dict[str, Any]:
    """The payload of the ``signal_received`` event that consumes ``signal``."""
    return {"payload": signal.payload, "signal_id": signal.id}
