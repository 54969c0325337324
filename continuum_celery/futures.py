"""What a workflow body waits on, and what each outcome event means to it.

A future names a command; waiting on it lets the engine reveal journal events
until that command's outcome is known. :func:`outcome_value` turns the outcome
into the body's value, or into the exception the body sees.
"""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any, Generic, TypeVar

from .errors import ActivityFailed, ChildCancelled, ChildFailed, ChildTimeout, InvalidArgument, SignalTimeout
from .events import Event, Kind
from .replay import Execution

T = TypeVar("T")


class Future(Generic[T]):
    """Something the body can wait on: an activity, a child run, a timer, a signal; ``T`` is what it gives."""

    def __init__(self, execution: Execution, command_id: int, what: str) -> None:
        self._execution = execution
        self.command_id = command_id
        self._what = what

    def done(self) -> bool:
        """True once the outcome is known (waiting on it would not block)."""
        return self._execution.resolved(self.command_id) is not None

    def event(self) -> Event:
        """Wait for the outcome event."""
        self._execution.wait(self.done, self._what)
        event = self._execution.resolved(self.command_id)
        assert event is not None
        return event

    def result(self) -> T:
        """Wait for the outcome; return the result or raise the failure."""
        value: T = outcome_value(self.event())
        return value


class ActivityFuture(Future[T]):
    """A started activity; ``result()`` waits for it (raises ``ActivityFailed``)."""


class ChildHandle(Future[T]):
    """A started child run; ``result()`` waits for it (raises ``ChildFailed`` / ``ChildCancelled``)."""

    def __init__(self, execution: Execution, command_id: int, what: str, run_id: str) -> None:
        super().__init__(execution, command_id, what)
        self.id = run_id

    def result(self, timeout: float | timedelta | None = None) -> T:
        """Wait for the child's end and return its result.

        With ``timeout`` (seconds, journaled as a timer) raise ``ChildTimeout`` if the child has
        not ended by then; the child keeps running, and a later ``result()`` still gets its end.

        Raises:
            ChildFailed / ChildCancelled: the child ended so. ChildTimeout: ``timeout`` elapsed first.
        """
        if timeout is None:
            return super().result()
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        if seconds < 0:
            raise InvalidArgument(f"child.result(timeout={timeout!r}): the timeout must not be negative.")
        execution = self._execution
        assert execution.now is not None
        fire_at = (execution.now + timedelta(seconds=seconds)).astimezone(timezone.utc).isoformat()
        cid = execution.command(Kind.TIMER_SCHEDULED, None, {"fire_at": fire_at})[0]
        timer: Future[None] = Future(execution, cid, "a timer")
        execution.wait(lambda: self.done() or timer.done(), self._what)
        if not self.done():
            raise ChildTimeout(
                f"child run {self.id} ({self._what}) did not end within {seconds:g} s; it keeps running",
                run_id=self.id,
                workflow=self._what.removeprefix("child "),
            )
        return super().result()


def outcome_value(event: Event) -> Any:
    """The value an outcome gives the body, or the exception it raises there."""
    payload = event.payload
    kind = event.kind
    if kind in (Kind.ACTIVITY_COMPLETED, Kind.CHILD_COMPLETED, Kind.COMPENSATION_COMPLETED):
        return payload.get("result")
    if kind is Kind.SIGNAL_RECEIVED:
        return payload.get("payload")
    if kind is Kind.TIMER_FIRED:
        return None
    error = payload.get("error") or {}
    message = error.get("message", "")
    if kind is Kind.ACTIVITY_FAILED:
        raise ActivityFailed(
            f"activity {event.name} failed after {payload.get('attempts', '?')} attempt(s): "
            f"{error.get('type', 'Error')}: {message}",
            activity=event.name,
            error=error,
            attempts=payload.get("attempts"),
        )
    if kind is Kind.SIGNAL_TIMED_OUT:
        raise SignalTimeout(f"signal {event.name!r} did not arrive in time", signal=event.name)
    if kind is Kind.CHILD_FAILED:
        raise ChildFailed(
            f"child run {payload.get('run_id')} ({event.name}) failed: {error.get('type', 'Error')}: {message}",
            run_id=payload.get("run_id"),
            workflow=event.name,
            error=error,
        )
    if kind is Kind.CHILD_CANCELLED:
        raise ChildCancelled(
            f"child run {payload.get('run_id')} ({event.name}) was cancelled",
            run_id=payload.get("run_id"),
            workflow=event.name,
        )
    raise InvalidArgument(f"unexpected outcome {kind.value} for command {event.command_id}")
