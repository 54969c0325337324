"""Starting runs and talking to them: ``RunHandle``, ``get_run``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from . import telemetry, tracing
from .canvas import CanvasSender
from .config import Settings
from .dispatch import Dispatcher
from .errors import RunNotFound, WorkflowFailed
from .events import Event
from .ids import new_run_id, run_id_for_message, validate_run_id, validate_signal_name
from .journal.base import Journal
from .journal.records import CanvasLink, Dispatch, NewRun, RunRecord
from .notify import Notifier
from .runtime import RunHandle
from .serialization import check_json, roundtrip

if TYPE_CHECKING:
    from .workflows import WorkflowDefinition


class EngineParts(Protocol):
    """What a client needs of its engine (built lazily, after fork, by the engine)."""

    @property
    def journal(self) -> Journal: ...

    dispatcher: Dispatcher
    notifier: Notifier
    settings: Settings
    canvas: CanvasSender

class Client:
    """Starts runs and reads them; bound to one engine."""

    def __init__(self, engine: EngineParts) -> None:
        self._engine = engine

    def start(
        self,
        defn: WorkflowDefinition[Any],
        input: Any,
        *,
        run_id: str | None = None,
        message_id: str | None = None,
        link: CanvasLink | None = None,
        timeout: float | None = None,
    ) -> JournalRunHandle:
        """Create the run (idempotent on ``run_id``) and dispatch its first step.

        ``message_id`` is the Celery task id of the message asking for the start: without a
        ``run_id``, the run id derives from it, so a redelivered or resent message starts the
        same run once. Without either, the run gets a new UUID (time-ordered: see ``new_run_id``).

        ``timeout``: the run's execution timeout in seconds, in place of the definition's.

        ``link``: what follows that Celery task in its canvas, stored with the run (see
        :mod:`continuum_celery.canvas`); sent at once if the run had already ended.
        """
        if run_id is not None:
            run_id = validate_run_id(run_id)
        else:
            run_id = run_id_for_message(message_id) if message_id is not None else new_run_id()
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
                timeout=timeout if timeout is not None else getattr(defn, "timeout", None),
                link=link,
            )
            record, created = self._engine.journal.create_run(new)
        if created:
            self._engine.dispatcher.send([Dispatch("replay", run_id, label=defn.name, version_hash=defn.version_hash)])
            telemetry.emit("run_started", run_id=run_id, workflow=defn.name)
        elif link is not None and record.terminal:
            self._engine.canvas.send_due(run_id)
        return JournalRunHandle(self, run_id)

    def get(self, run_id: str) -> JournalRunHandle:
        """A handle on an existing run. Raises RunNotFound."""
        self._engine.journal.get_run(validate_run_id(run_id))
        return JournalRunHandle(self, run_id)

    @property
    def engine(self) -> EngineParts:
        return self._engine


class JournalRunHandle(RunHandle):
    """A run's handle that reads and writes the journal of its client's engine."""

    def __init__(self, client: Client, run_id: str) -> None:
        self._client = client
        self.id = run_id

    def record(self) -> RunRecord:
        """The run row as stored now."""
        return self._client.engine.journal.get_run(self.id)

    def status(self) -> str:
        return self.record().state

    def history(self) -> list[Event]:
        return self._client.engine.journal.history(self.id)

    def signal(self, name: str, payload: Any = None) -> None:
        validate_signal_name(name)
        check_json(payload, f"payload of signal {name!r}", self._client.engine.settings.max_payload_bytes)
        engine = self._client.engine
        engine.dispatcher.send(engine.journal.send_signal(self.id, name, roundtrip(payload)))

    def cancel(self) -> None:
        engine = self._client.engine
        engine.dispatcher.send(engine.journal.request_cancel(self.id))

    def result(self, timeout: float | None = None) -> Any:
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
                raise WorkflowFailed.of_run(run_id, record.workflow, record.state, record.error)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"run {self.id} did not finish within {timeout} s (it is {record.state})")
            notifier.wait_finished(run_id, remaining, _finished_check(journal, run_id))


def _finished_check(journal: Any, run_id: str) -> Callable[[], bool]:
    """The authoritative "has it ended?" probe a notifier falls back on."""
    return lambda: journal.get_run(run_id).terminal
