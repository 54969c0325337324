"""The internal Celery tasks. Thin: each takes ids, and calls the stepper, executor or sweep.

All use ``acks_late`` with ``reject_on_worker_lost`` (a crash redelivers the
message; the row's compare-and-swap drops a duplicate), ignore their Celery
results (results live in the journal) and never use Celery's own retries.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from celery.exceptions import Ignore

from . import telemetry
from .canvas import CanvasSender, link_of
from .client import Client
from .config import Settings
from .dispatch import ACTIVITY_TASK, REPLAY_TASK, START_TASK, SWEEP_TASK, Dispatcher
from .errors import InvalidArgument, LeaseLost
from .executor import run_attempt
from .journal.base import Journal
from .states import TERMINAL
from .stepper import Stepper

if TYPE_CHECKING:
    from celery import Celery, Task


class TaskEngine(Protocol):
    """What the internal tasks need of their engine (:class:`~continuum_celery.installer.Continuum`)."""

    settings: Settings
    dispatcher: Dispatcher
    client: Client
    canvas: CanvasSender

    @property
    def journal(self) -> Journal: ...

    @property
    def stepper(self) -> Stepper: ...

    @property
    def owner(self) -> str: ...

    def sweep_once(self) -> int: ...

TASK_OPTIONS: dict[str, Any] = {
    # Bound to this app only: a shared task would be copied into every app finalized
    # later in the process, where it would run another engine's journal.
    "shared": False,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "max_retries": 0,
}


def register_tasks(app: Celery, engine: TaskEngine) -> None:
    """Define ``continuum.replay``, ``.activity``, ``.start`` and ``.sweep`` on ``app``."""

    def replay(run_id: str) -> str:
        """Advance a run by one or more replay steps; a run that ended continues its canvas."""
        try:
            state = engine.stepper.step(run_id)
        except LeaseLost:
            return "lease_lost"
        if state in TERMINAL:  # its canvas links are due now (or, continued, move to the next run)
            engine.canvas.send_due(run_id)
        return state

    def activity(task_id: str, attempt: int) -> str:
        """Run one attempt of an activity or compensation."""
        return run_attempt(
            engine.journal,
            engine.dispatcher,
            task_id,
            attempt,
            engine.owner,
            celery_tasks=app.tasks,
            max_payload_bytes=engine.settings.max_payload_bytes,
        )

    def start(task: Task, *args: Any, workflow: str, run_id: str | None = None) -> str:
        """Start a run from a Celery canvas; the run's end sends its result where this task's would go.

        Without ``run_id`` the run id comes from the message's task id, so a redelivered or
        resent start message starts one run, not one per delivery.
        """
        if len(args) > 1:
            raise InvalidArgument(
                f"continuum.start for {workflow} got {len(args)} positional values; a workflow takes one "
                "input (in a chain, the previous task's result): pass a single dict."
            )
        from .workflows import get_workflow

        defn, input = get_workflow(workflow), args[0] if args else None
        if task.request.called_directly:
            return engine.client.start(defn, input, run_id=run_id).id
        link = link_of(task.request, engine.settings.max_payload_bytes)
        engine.client.start(defn, input, run_id=run_id, message_id=task.request.id, link=link)
        raise Ignore()  # Celery stores no result and continues no canvas: the run's end does (canvas.py)

    def sweep() -> int:
        """Re-derive and send every due dispatch from the journal."""
        return engine.sweep_once()

    # Celery's decorator is unannotated: called on the typed functions, it registers them as they are.
    app.task(name=REPLAY_TASK, **TASK_OPTIONS)(replay)
    app.task(name=ACTIVITY_TASK, **TASK_OPTIONS)(activity)
    app.task(name=START_TASK, bind=True, shared=False, acks_late=True, reject_on_worker_lost=True, max_retries=0)(start)
    # No task events: a sweep every few seconds would bury the runs in a monitor's task list.
    app.task(name=SWEEP_TASK, shared=False, ignore_result=True, max_retries=0, send_events=False)(sweep)


def timed(fn: Any) -> tuple[Any, float]:
    """Call ``fn`` and return (its value, seconds it took)."""
    began = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - began


def emit_sweep(dispatched: int, due_backlog: int | None, duration: float) -> None:
    """Report one sweep: what it sent, and the due work still waiting for a worker."""
    telemetry.emit("sweep", duration=duration, dispatched=dispatched, due_backlog=due_backlog)
