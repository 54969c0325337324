"""Turn the journal's ``Dispatch`` records into Celery messages, after the commit.

Messages carry ids only, and are published with a deadline (see
:mod:`continuum_celery.publisher`). A dispatch due in the future (an activity
retry) is never an ETA message: it becomes a wake-up in Redis (or the
in-process heap), and the beat sweep re-derives it from the journal if that
is lost.

A replay of a run pinned to a version goes to that version's queue (see
:mod:`continuum_celery.routing`), so only a worker that has the code takes it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_PUBLISH_TIMEOUT
from .journal.records import Dispatch
from .publisher import Publisher
from .routing import base_queue, version_queue
from .wakeups import Wakeups

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

REPLAY_TASK = "continuum.replay"
ACTIVITY_TASK = "continuum.activity"
START_TASK = "continuum.start"
SWEEP_TASK = "continuum.sweep"
#: The built-in workflow that runs durable canvases (``continuum_celery.durable``), loaded everywhere.
CANVAS_WORKFLOW = "continuum.canvas"


def run_member(run_id: str, version_hash: str | None = None) -> str:
    """The wake-up member that replays a run (with its version, for routing)."""
    return f"run|{run_id}|{version_hash}" if version_hash else f"run|{run_id}"


class Dispatcher:
    """Sends replay and activity messages; defers future work to wake-ups."""

    def __init__(
        self,
        app: Celery,
        queue: str | None,
        wakeups: Wakeups | None,
        *,
        version_routing: bool = True,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
    ) -> None:
        self.app = app
        self.queue = queue
        self.wakeups = wakeups
        self.version_routing = version_routing
        self.publisher = Publisher(app, publish_timeout)

    def send(self, dispatches: Iterable[Dispatch]) -> None:
        """Send each dispatch now, or schedule it as a wake-up when it is due later.

        Sending is best effort: a lost message is re-derived by the sweep.
        """
        now = datetime.now(timezone.utc)
        for d in dispatches:
            try:
                if d.due is not None and d.due > now and self.wakeups is not None:
                    self.wakeups.schedule(self._member(d), d.due.timestamp())
                elif d.kind == "replay":
                    self.replay(d.id, d.label, d.version_hash)
                else:
                    self.activity(d.id, d.attempt, d.queue, d.label)
            except Exception:  # the journal holds the truth; the sweep sends it again
                log.warning("could not dispatch %s %s; the sweep will retry", d.kind, d.id, exc_info=True)

    def replay(self, run_id: str, label: str = "", version_hash: str | None = None) -> None:
        self._send(REPLAY_TASK, [run_id], self.replay_queue(version_hash), f"{label} run={run_id}")

    def replay_queue(self, version_hash: str | None) -> str | None:
        """Where a replay goes: the version's queue when routing applies, else the engine's queue."""
        if self.version_routing and version_hash:
            return version_queue(base_queue(self.app, self.queue), version_hash)
        return self.queue

    def activity(self, task_id: str, attempt: int, queue: str | None, label: str = "") -> None:
        self._send(
            ACTIVITY_TASK,
            [task_id, attempt],
            queue or self.queue,
            f"{label} task={task_id} attempt={attempt}",
        )

    def schedule_wakeup(self, run_id: str, due: datetime, version_hash: str | None = None) -> None:
        """Wake the run at ``due`` (best effort; the sweep covers a lost wake-up)."""
        if self.wakeups is None:
            return
        try:
            self.wakeups.schedule(run_member(run_id, version_hash), due.timestamp())
        except Exception:
            log.warning(
                "could not schedule the wake-up of run %s; the sweep will cover it",
                run_id,
                exc_info=True,
            )

    def dispatch_member(self, member: str) -> None:
        """Called by the wake-up pump with a due member."""
        parts = member.split("|", 4)
        if parts[0] == "run" and len(parts) in (2, 3):
            self.replay(parts[1], version_hash=parts[2] if len(parts) == 3 else None)
        elif parts[0] == "activity" and len(parts) in (4, 5):
            # The fifth part, the activity name, only labels the message (older members lack it).
            attempt, queue, task_id = parts[1:4]
            self.activity(task_id, int(attempt), queue or None, parts[4] if len(parts) == 5 else "")
        else:
            log.warning("ignoring unknown wake-up member %r", member)

    @staticmethod
    def _member(d: Dispatch) -> str:
        if d.kind == "replay":
            return run_member(d.id, d.version_hash)
        return f"activity|{d.attempt}|{d.queue or ''}|{d.id}|{d.label}"

    def _send(self, name: str, args: list[Any], queue: str | None, argsrepr: str) -> None:
        # Not a child of the task that sends it (a start task's result must not list its internal
        # replay), and no result to wait for: a Redis result backend then never subscribes to one.
        options: dict[str, Any] = {"argsrepr": argsrepr.strip(), "add_to_parent": False, "ignore_result": True}
        if queue:
            options["queue"] = queue
        self.publisher.send(name, args, **options)
