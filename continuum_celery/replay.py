"""The pure replay engine: history in, decision out. No I/O.

A workflow body runs in a dedicated thread that only ever runs while the
engine waits for it (a strict hand-off), so the body is plain blocking Python.
The journal feeds events in; the body's context matches the commands it issues
against the journal's command stream and, when it has to wait, sees outcome
events revealed one at a time in journal order. Replaying a history and
living through it therefore take the same path, and an execution kept in
memory can be advanced by only the events that are new since its last step.
"""

from __future__ import annotations

import contextvars
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import NondeterminismError, RunCancelled, WorkflowTimeout
from .events import TERMINAL_EVENTS, Event, InboxSignal, Kind, NewEvent, first_signal, received
from .serialization import check_storable, encode_error


@dataclass(frozen=True)
class ContinueAsNewRequest:
    """Returned by ``ctx.continue_as_new``; the body must return it."""

    input: Any


@dataclass(frozen=True)
class Complete:
    """The body returned ``result``."""

    result: Any


@dataclass(frozen=True)
class Fail:
    """The body raised; ``error`` is the encoded exception."""

    error: dict[str, Any]


@dataclass(frozen=True)
class Cancelled:
    """The body ended by letting ``RunCancelled`` escape."""

    error: dict[str, Any]


@dataclass(frozen=True)
class ContinueAsNew:
    """The body returned ``ctx.continue_as_new(input)``."""

    input: Any


Outcome = Complete | Fail | Cancelled | ContinueAsNew


@dataclass
class Decision:
    """What one step decided: events to append, and the run's outcome (None: keep waiting)."""

    commands: list[NewEvent] = field(default_factory=list)
    outcome: Outcome | None = None


class _Abort(BaseException):
    """Unwinds a body that must stop (nondeterminism, eviction); bodies cannot catch it by accident."""


class _Handoff:
    """Runs ``target`` in its own thread, but only while the caller waits: one side at a time."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self._target = target
        self._to_body = threading.Semaphore(0)
        self._to_engine = threading.Semaphore(0)
        self._thread: threading.Thread | None = None
        self._name = name
        self.aborting = False
        self.finished = False

    def resume(self) -> None:
        """Let the body run until it waits or ends."""
        if self._thread is None:
            ctx = contextvars.copy_context()
            self._thread = threading.Thread(target=ctx.run, args=(self._main,), name=self._name, daemon=True)
            self._thread.start()
        else:
            self._to_body.release()
        self._to_engine.acquire()

    def pause(self) -> None:
        """Called from the body: hand control back and wait to be resumed."""
        self._to_engine.release()
        self._to_body.acquire()
        if self.aborting:
            raise _Abort()

    def abort(self) -> None:
        """Unwind a paused body and let its thread end."""
        if self._thread is None or self.finished:
            return
        self.aborting = True
        self._to_body.release()
        self._to_engine.acquire()

    def _main(self) -> None:
        try:
            self._target()
        finally:
            self.finished = True
            self._to_engine.release()


class Execution:
    """One live run of a workflow body, advanced by journal events.

    Args:
        fn: the workflow function ``(ctx, input)``.
        input: the run's input.
        make_context: builds the body's context from this execution.
        saga: run compensations when the body raises or is cancelled.
        run_id: for error messages and thread names.
    """

    def __init__(
        self,
        fn: Callable[[Any, Any], Any],
        input: Any,
        make_context: Callable[[Execution], Any],
        *,
        saga: bool = False,
        run_id: str = "",
    ) -> None:
        self.run_id = run_id
        self.last_seq = 0
        self.now: datetime | None = None
        self.replaying = True
        self.history_ended = False
        self._fn = fn
        self._input = input
        self._saga = saga
        self._commands: deque[Event] = deque()
        self._outcomes: deque[Event] = deque()
        self._resolved: dict[int, Event] = {}
        self._next_command_id = 1
        self._new: list[NewEvent] = []
        self._inbox: list[InboxSignal] = []
        self._outcome: Outcome | None = None
        self._error: BaseException | None = None
        self._cancel_seen = False
        self._on_reveal: list[Callable[[Event], None]] = []
        self.context = make_context(self)
        self._handoff = _Handoff(self._main, name=f"continuum-run-{run_id[:8]}")

    # ---- engine side -------------------------------------------------------------------

    def advance(self, events: Iterable[Event], now: datetime, inbox: Sequence[InboxSignal] = ()) -> Decision:
        """Feed the journal's events after ``last_seq`` and run the body until it waits or ends.

        ``inbox`` holds signals no recorded wait took; a new wait may take one at once (see :meth:`receive`).

        Raises:
            NondeterminismError: the body did not reproduce the history; the execution is dead.
        """
        if self._outcome is not None or self._error is not None:
            raise RuntimeError("advance() on a finished execution")
        self.now = now
        for event in events:
            if event.seq <= self.last_seq:
                continue
            self.last_seq = event.seq
            if event.is_command:
                self._commands.append(event)
            elif event.is_outcome or event.kind in TERMINAL_EVENTS:
                self._outcomes.append(event)
                # A finished run's history (replay checks): code past its last command ran before.
                self.history_ended = self.history_ended or event.kind in TERMINAL_EVENTS
        self._new = []
        self._inbox = list(inbox)
        self._handoff.resume()
        if self._error is not None:
            self.close()
            raise self._error
        return Decision(commands=self._new, outcome=self._outcome)

    def acknowledge(self, last_seq: int) -> None:
        """The journal stored the last decision's commands up to ``last_seq``."""
        self.last_seq = last_seq

    @property
    def finished(self) -> bool:
        return self._outcome is not None or self._error is not None

    def close(self) -> None:
        """Release the body's thread (eviction from a cache, or a dead execution)."""
        self._handoff.abort()

    # ---- body side: used by the context ------------------------------------------------

    def command(self, kind: Kind, name: str | None, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Issue a command; return its id and payload (the journal's on replay, ``payload`` if new).

        Raises:
            PayloadError: a new command the journal could not store (a name or option JSON cannot
                carry); raised to the body, so the run fails with it instead of failing every commit.
        """
        cid = self._next_command_id
        if not self._commands:
            check_storable({"name": name, "payload": payload}, f"command {cid} ({kind.value}) of run {self.run_id}")
        self._next_command_id += 1
        if self._commands:
            recorded = self._commands.popleft()
            if recorded.kind != kind or recorded.name != name or recorded.command_id != cid:
                self._fatal(
                    recorded.seq,
                    f"{recorded.kind.value} {recorded.name!r} (command {recorded.command_id})",
                    f"{kind.value} {name!r} (command {cid})",
                )
            self.replaying = bool(self._commands)
            return cid, dict(recorded.payload)
        self.replaying = False
        self._new.append(NewEvent(kind=kind, command_id=cid, name=name, payload=payload))
        return cid, payload

    @property
    def next_command_id(self) -> int:
        """The id the next command will get."""
        return self._next_command_id

    def peek_command(self) -> Event | None:
        """The next recorded command not yet matched (for ``patched()``)."""
        return self._commands[0] if self._commands else None

    def skip_command(self) -> None:
        """Consume the next recorded command (a patch marker that matched)."""
        self._commands.popleft()
        self._next_command_id += 1
        self.replaying = bool(self._commands)

    def receive(self, command_id: int, name: str) -> None:
        """Let the signal wait just issued as ``command_id`` take a signal already in the inbox.

        Its ``signal_received`` joins the decision right after the wait, so one step consumes every
        signal waiting, not one per replay. Only with no other outcome left to reveal: on replay those
        come first (journal order), so the body must see them first now too.
        """
        fresh = bool(self._new) and self._new[-1].command_id == command_id
        signal = first_signal(self._inbox, name) if fresh and not self._outcomes else None
        if signal is None:
            return
        self._inbox.remove(signal)
        payload = received(signal)
        self._new.append(NewEvent(Kind.SIGNAL_RECEIVED, command_id, name, payload))
        self._reveal(Event(self.last_seq + len(self._new), Kind.SIGNAL_RECEIVED, command_id, name, payload))

    def resolved(self, command_id: int) -> Event | None:
        """The outcome revealed so far for ``command_id``, if any."""
        return self._resolved.get(command_id)

    def on_reveal(self, callback: Callable[[Event], None]) -> None:
        """Call ``callback`` with every outcome as it is revealed (the context tracks completions)."""
        self._on_reveal.append(callback)

    def wait(self, ready: Callable[[], bool], waiting_for: str) -> None:
        """Block the body until ``ready()``; reveal outcomes one at a time; suspend when none are left.

        Raises:
            RunCancelled: a cancel request was revealed while waiting (once per run).
        """
        while not ready():
            if self._outcomes:
                self._reveal(self._outcomes.popleft())
                continue
            if self._commands:
                recorded = self._commands[0]
                self._fatal(
                    recorded.seq,
                    f"{recorded.kind.value} {recorded.name!r}",
                    f"a wait on {waiting_for}",
                )
            self._handoff.pause()

    def _reveal(self, event: Event) -> None:
        if event.kind is Kind.RUN_TIMED_OUT:
            if not self._cancel_seen:  # a saga compensating, or a body already cancelled, finishes first
                self._cancel_seen = True
                deadline = event.payload.get("deadline")
                raise WorkflowTimeout(
                    f"run {self.run_id} did not finish by its deadline {deadline} "
                    "(@workflow(timeout=...)); raise the timeout if the workflow needs longer",
                    run_id=self.run_id,
                    deadline=deadline,
                )
            return
        if event.kind is Kind.CANCEL_REQUESTED:
            if not self._cancel_seen:
                self._cancel_seen = True
                raise RunCancelled(f"run {self.run_id} was cancelled", run_id=self.run_id)
            return
        if event.command_id is not None:
            self._resolved[event.command_id] = event
        for callback in self._on_reveal:
            callback(event)

    def _fatal(self, seq: int, recorded: str, requested: str) -> None:
        self._error = NondeterminismError(
            f"run {self.run_id}: at event {seq} the history holds {recorded} but the code asked for "
            f"{requested}. The workflow code changed incompatibly or is not deterministic: keep the old "
            "body under its version, guard the change with ctx.patched(), and read time and randomness "
            "only through ctx. The run is left suspended and untouched.",
            run_id=self.run_id,
            seq=seq,
            recorded=recorded,
            requested=requested,
        )
        raise _Abort()

    def _main(self) -> None:
        try:
            outcome = self._run_body()
            if self._commands:
                self._unmatched(outcome)
            self._outcome = outcome
        except _Abort:
            return

    def _run_body(self) -> Outcome:
        try:
            try:
                result = self._fn(self.context, self._input)
            except RunCancelled as exc:
                return self._finish_failed(exc, Cancelled)
            except _Abort:
                raise
            except Exception as exc:
                return self._finish_failed(exc, Fail)
            if isinstance(result, ContinueAsNewRequest):
                return ContinueAsNew(result.input)
            return Complete(self.context.checked_result(result))
        except Exception as exc:  # a failure while compensating or encoding the result
            return Fail(encode_error(exc))

    def _unmatched(self, outcome: Outcome) -> None:
        """The body ended before reissuing every recorded command: the code no longer matches the history."""
        if isinstance(outcome, Fail):
            ended = f"raised {outcome.error.get('type')}"
        else:
            ended = {Complete: "returned", Cancelled: "let RunCancelled escape", ContinueAsNew: "continued as new"}[
                type(outcome)
            ]
        first, left = self._commands[0], len(self._commands)
        more = f" and {left - 1} more recorded command(s)" if left > 1 else ""
        self._fatal(
            first.seq,
            f"{first.kind.value} {first.name!r} (command {first.command_id}){more}",
            f"nothing more (the body {ended})",
        )

    def _finish_failed(self, exc: BaseException, outcome: type[Fail] | type[Cancelled]) -> Fail | Cancelled:
        error = encode_error(exc)
        if self._saga:
            # Compensating is the cleanup: a cancel arriving meanwhile must not cut it short.
            self._cancel_seen = True
            error["compensations"] = self.context.compensate()
        return outcome(error)


def replay_history(
    fn: Callable[[Any, Any], Any],
    input: Any,
    history: Sequence[Event],
    make_context: Callable[[Execution], Any],
    now: datetime,
    *,
    saga: bool = False,
    run_id: str = "",
) -> Decision:
    """Replay a whole history in a fresh execution and return the decision (for checks and tests)."""
    execution = Execution(fn, input, make_context, saga=saga, run_id=run_id)
    try:
        return execution.advance(history, now)
    finally:
        execution.close()
