"""Starting runs and talking to them: ``RunHandle``, ``get_run``."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import telemetry, tracing
from .errors import InvalidArgument, RunNotFound, WorkflowFailed
from .events import Event
from .journal.base import Dispatch, NewRun, RunRecord
from .serialization import check_json, roundtrip

if TYPE_CHECKING:
    from .definitions import WorkflowDefinition
    from .installer import Continuum

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_SIGNAL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:-]{0,199}$")


def validate_run_id(run_id: Any) -> str:
    """Return ``run_id`` if it is a usable id.

    Raises:
        InvalidArgument: not a str of 1-128 letters, digits and ``._:@-``, starting with a letter or digit.
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise InvalidArgument(
            f"run_id {run_id!r} is malformed: use 1 to 128 characters of letters, digits and . _ : @ -, "
            "starting with a letter or digit (or leave it out to get a UUID).",
            run_id=repr(run_id),
        )
    return run_id


def validate_signal_name(name: Any) -> str:
    """Return ``name`` if it is a usable signal name. Raises InvalidArgument."""
    if not isinstance(name, str) or not _SIGNAL_NAME.fullmatch(name):
        raise InvalidArgument(
            f"signal name {name!r} is malformed: use 1 to 200 letters, digits and . _ : -.",
            signal=repr(name),
        )
    return name


class Client:
    """Starts runs and reads them; bound to one engine."""

    def __init__(self, engine: Continuum) -> None:
        self._engine = engine

    def start(self, defn: WorkflowDefinition[Any], input: Any, run_id: str | None = None) -> RunHandle:
        """Create the run (idempotent on ``run_id``) and dispatch its first step."""
        run_id = validate_run_id(run_id) if run_id is not None else str(uuid.uuid4())
        check_json(input, f"input of workflow {defn.name}", self._engine.settings.max_payload_bytes)
        with tracing.span(
            "continuum.start",
            attributes={"continuum.workflow": defn.name, "continuum.run_id": run_id},
        ):
            new = NewRun(
                id=run_id,
                workflow=defn.name,
                version_hash=defn.version_hash,
                version=defn.version,
                input=roundtrip(input),
                trace_context=tracing.new_trace_context(),
            )
            _, created = self._engine.journal.create_run(new)
        if created:
            self._engine.dispatcher.send([Dispatch("replay", run_id, label=defn.name, version_hash=defn.version_hash)])
            telemetry.emit("run_started", run_id=run_id, workflow=defn.name)
        return RunHandle(self, run_id)

    def get(self, run_id: str) -> RunHandle:
        """A handle on an existing run. Raises RunNotFound."""
        self._engine.journal.get_run(validate_run_id(run_id))
        return RunHandle(self, run_id)

    @property
    def engine(self) -> Continuum:
        return self._engine


class RunHandle:
    """A run, by id: its state, result, history; send it signals or cancel it."""

    def __init__(self, client: Client, run_id: str) -> None:
        self._client = client
        self.id = run_id

    def __repr__(self) -> str:
        return f"<RunHandle {self.id}>"

    def record(self) -> RunRecord:
        """The run row as stored now."""
        return self._client.engine.journal.get_run(self.id)

    def status(self) -> str:
        """``pending``, ``running``, ``suspended``, ``completed``, ``failed``, ``cancelled`` or ``continued``."""
        return self.record().state

    def history(self) -> list[Event]:
        """Every event of the run, in order."""
        return self._client.engine.journal.history(self.id)

    def signal(self, name: str, payload: Any = None) -> None:
        """Deliver a signal durably to the run's inbox, even while it runs or sleeps.

        Raises:
            RunNotFound, RunFinished: no such run, or it has ended.
            PayloadError: ``payload`` is not JSON.
        """
        validate_signal_name(name)
        check_json(payload, f"payload of signal {name!r}", self._client.engine.settings.max_payload_bytes)
        engine = self._client.engine
        engine.dispatcher.send(engine.journal.send_signal(self.id, name, roundtrip(payload)))

    def cancel(self) -> None:
        """Ask the run (and its children) to stop at the next step. Twice is harmless.

        Pending timers and signal waits are dropped, activities not yet started never start,
        running ones are not retried; the body sees ``RunCancelled`` at its next wait. A run
        that continued as new is cancelled in its successor.

        Raises:
            RunFinished: the run already completed or failed.
        """
        engine = self._client.engine
        engine.dispatcher.send(engine.journal.request_cancel(self.id))

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run (following continue-as-new to the last run) and return its result.

        Raises:
            WorkflowFailed: the run failed or was cancelled (``state`` and ``error`` attributes).
            TimeoutError: ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        run_id = self.id
        journal = self._client.engine.journal
        notifier = self._client.engine.notifier
        while True:
            record = journal.get_run(run_id)
            if record.state == "continued":
                nxt = journal.continued_to(run_id)
                if nxt is None:
                    raise RunNotFound(f"run {run_id} continued, but its successor is missing", run_id=run_id)
                run_id = nxt
                continue
            if record.state == "completed":
                return record.result
            if record.state in ("failed", "cancelled"):
                error = record.error or {}
                reason = f"{error.get('type', '')}: {error.get('message', '')}"
                raise WorkflowFailed(
                    f"run {run_id} ({record.workflow}) {record.state}: {reason}",
                    run_id=run_id,
                    state=record.state,
                    error=error,
                )
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"run {self.id} did not finish within {timeout} s (it is {record.state})")
            notifier.wait_finished(run_id, remaining, _finished_check(journal, run_id))


def _finished_check(journal: Any, run_id: str) -> Callable[[], bool]:
    """The authoritative "has it ended?" probe a notifier falls back on."""
    return lambda: journal.get_run(run_id).terminal
