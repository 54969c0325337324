"""Version-routed replay queues, and the heartbeat that advertises a worker's versions.

A run resumes only on code that has its version. Replay messages for a run
pinned to ``version_hash`` go to the queue ``<base>.v.<version_hash>``, where
``<base>`` is the engine's queue (``continuum_queue``, else Celery's
``task_default_queue``). At boot a worker adds the queues of every version it
serves (its own hashes and those its bodies declare ``compatible_with``) to the
queues it consumes, next to the common one, so during a rolling deploy only a
worker that has the code picks a run up. Messages for a version no worker has
wait in their queue; the sweep parks such runs as ``unknown_version`` until a
worker with that version registers.

Workers that consume a custom ``-Q`` list without the base queue (activity-only
workers) get no version queues: they never take replays.

:class:`VersionHeartbeat` refreshes the worker's rows in
``continuum_workflow_versions`` so the sweep can tell live versions from those
of workers that died without a clean shutdown.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING

from . import telemetry
from .errors import ConfigurationError

if TYPE_CHECKING:
    from celery import Celery

    from .journal.base import Journal

log = logging.getLogger(__name__)

#: Between the base queue's name and the version hash.
VERSION_QUEUE_INFIX = ".v."


def base_queue(app: Celery, queue: str | None) -> str:
    """The queue replays go to when no version applies: ``queue``, else the app's default queue."""
    return queue or str(app.conf.task_default_queue)


def version_queue(base: str, version_hash: str) -> str:
    """The queue of replays for runs pinned to ``version_hash``."""
    return f"{base}{VERSION_QUEUE_INFIX}{version_hash}"


def add_version_queues(app: Celery, base: str, hashes: Iterable[str]) -> list[str]:
    """Make this worker consume the version queue of each hash; return the queues added.

    Call it before the worker's consumer starts (the ``worker_init`` signal).
    Nothing is added when the worker does not consume ``base``.
    """
    queues = app.amqp.queues
    if base not in queues.consume_from:
        log.info("continuum: this worker does not consume %r, so it takes no replays of any version", base)
        return []
    added = [version_queue(base, h) for h in sorted(set(hashes))]
    for name in added:
        # Declared as a sender declares a queue it does not know (its own exchange and routing key).
        queues.select_add(queues.new_missing(name))
    return added


class VersionHeartbeat(threading.Thread):
    """A daemon thread that calls ``beat()`` every ``interval`` seconds until :meth:`stop`.

    ``beat`` upserts the worker's served versions (refreshing ``last_seen_at``
    and un-parking runs that wait for them). A failing beat is logged and
    retried at the next interval; the thread never dies of it.

    Raises:
        ConfigurationError: ``interval`` is not positive.
    """

    def __init__(self, beat: Callable[[], None], interval: float) -> None:
        if interval <= 0:
            raise ConfigurationError(f"version heartbeat interval {interval!r}: use a positive number of seconds.")
        super().__init__(name="continuum-version-heartbeat", daemon=True)
        self._beat = beat
        self._interval = interval
        self._stopped = threading.Event()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to end and wait up to ``timeout`` seconds for it."""
        self._stopped.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout)

    def run(self) -> None:
        failing = False
        while not self._stopped.wait(self._interval):
            try:
                self._beat()
            except Exception:
                if not failing:
                    log.warning("continuum: could not refresh this worker's versions; retrying", exc_info=True)
                failing = True
            else:
                if failing:
                    log.info("continuum: worker versions refreshed again")
                failing = False


def report_unknown_versions(
    journal: Journal, *, live_within: float, batch: int, served: Collection[tuple[str, str]] = ()
) -> list[tuple[str, str, int]]:
    """Park due runs whose version no live worker serves; emit ``unknown_version`` once per such version.

    Called once per sweep, so the event fires once per sweep for as long as a
    version stays missing (with ``runs``: how many of its runs are parked), never
    in a dispatch loop. ``served`` lists what the calling process serves itself.
    Failures are logged: the rest of the sweep goes on.
    """
    try:
        parked = journal.park_unknown_versions(live_within=live_within, batch=batch, also_live=served)
    except Exception:
        log.warning("continuum: could not check for runs on versions no worker has", exc_info=True)
        return []
    for workflow, version_hash, count in parked:
        telemetry.emit("unknown_version", workflow=workflow, version_hash=version_hash, runs=count)
        log.warning(
            "continuum: %d run(s) of %s are pinned to version %s, which no live worker has; they stay "
            "suspended until a worker with that code starts (see `continuum versions`)",
            count,
            workflow,
            version_hash,
        )
    return parked
