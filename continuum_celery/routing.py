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

A worker started without ``-Q`` consumes the base queue (also a custom
``continuum_queue``) next to Celery's defaults. Workers that consume a custom
``-Q`` list without the base queue (activity-only workers) get no version
queues: they never take replays, and say so in their startup log.

:class:`VersionHeartbeat` refreshes the worker's rows in
``continuum_workflow_versions`` so the sweep can tell live versions from those
of workers that died without a clean shutdown.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

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


def consume_engine_queues(app: Celery, base: str, hashes: Iterable[str]) -> list[str]:
    """Make this worker consume the engine's queue ``base`` and the version queue of each hash.

    Call it before the worker's consumer starts (the ``worker_init`` signal). Without ``-Q``
    the worker consumes ``base`` next to Celery's default queues, even when it is a custom
    ``continuum_queue``. With a ``-Q`` list that leaves ``base`` out (an activity-only worker)
    nothing is added: that worker takes no replays of any version. Returns the queues added.
    """
    queues = app.amqp.queues
    added: list[str] = []
    # Celery keeps the -Q selection here; None means the worker consumes its default queues.
    if getattr(queues, "_consume_from", None) is None and base not in queues.consume_from:
        added.append(base)
    elif base not in queues.consume_from:
        return []
    added += [version_queue(base, h) for h in sorted(set(hashes))]
    for name in added:
        # A queue not in task_queues is declared as a sender declares it (its own exchange and routing key).
        queues.select_add(queues[name])
    return added


def log_worker_plan(app: Celery, base: str, served: Iterable[tuple[str, int, str]]) -> None:
    """Log, at worker start, the workflows this worker registered and the continuum queues it consumes.

    ``served`` holds (workflow, version, version hash). When ``-Q`` leaves the engine's queue out,
    say what this worker will not consume and what that means.
    """
    workflows = sorted(served)
    if workflows:
        log.info(
            "continuum: workflows registered: %s",
            ", ".join(f"{name} v{version} ({version_hash})" for name, version, version_hash in workflows),
        )
    else:
        log.warning(
            "continuum: no workflows registered: list their modules in Celery's `imports` or in "
            "`continuum_workflow_modules`; this worker runs activities only"
        )
    consumed = sorted(app.amqp.queues.consume_from)
    if base in consumed:
        versions = [q for q in consumed if q.startswith(base + VERSION_QUEUE_INFIX)]
        log.info("continuum: consuming %r (replays, starts, sweeps) and version queues %s", base, versions or "none")
    else:
        log.warning(
            "continuum: this worker consumes only %s (-Q): it will not consume %r, continuum's queue, nor any "
            "version queue %r, so it takes no replays, starts or sweeps; run another worker that consumes %r",
            ", ".join(consumed),
            base,
            version_queue(base, "*"),
            base,
        )


class Periodic(threading.Thread):
    """A daemon thread that calls ``job()`` about every ``interval`` seconds until :meth:`stop`.

    With ``jitter`` each wait is drawn from ``interval * (1 ± jitter)``, so many workers
    started together spread their calls. A failing call is logged (once until it
    succeeds again) and retried at the next interval; the thread never dies of it.

    Raises:
        ConfigurationError: ``interval`` is not positive.
    """

    def __init__(self, job: Callable[[], Any], interval: float, *, name: str, what: str, jitter: float = 0.0) -> None:
        if interval <= 0:
            raise ConfigurationError(f"{what} interval {interval!r}: use a positive number of seconds.")
        super().__init__(name=name, daemon=True)
        self._job = job
        self._interval = interval
        self._jitter = jitter
        self._what = what
        self._stopped = threading.Event()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to end and wait up to ``timeout`` seconds for it."""
        self._stopped.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout)

    def run(self) -> None:
        failing = False
        while not self._stopped.wait(self._interval * random.uniform(1 - self._jitter, 1 + self._jitter)):
            try:
                self._job()
            except Exception:
                if not failing:
                    log.warning("continuum: %s failed; retrying", self._what, exc_info=True)
                failing = True
            else:
                if failing:
                    log.info("continuum: %s works again", self._what)
                failing = False


class VersionHeartbeat(Periodic):
    """Calls ``beat()`` every ``interval`` seconds: upserts the worker's served versions
    (refreshing ``last_seen_at`` and un-parking runs that wait for them)."""

    def __init__(self, beat: Callable[[], None], interval: float) -> None:
        super().__init__(beat, interval, name="continuum-version-heartbeat", what="version heartbeat")


#: (workflow, version hash) this process has warned about, until the version is served again.
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def report_unknown_versions(
    journal: Journal, *, live_within: float, batch: int, served: Collection[tuple[str, str]] = ()
) -> list[tuple[str, str, int]]:
    """Park due runs whose version no live worker serves; emit ``unknown_version`` once per such version.

    Called once per sweep, so the event (and the ``unknown_version_total`` metric)
    fires once per sweep for as long as a version stays missing (with ``runs``: how
    many of its runs are parked), never in a dispatch loop. The warning is logged
    once per version per process, and again only if the version goes missing again
    after it was served. ``served`` lists what the calling process serves itself.
    Failures are logged: the rest of the sweep goes on.
    """
    try:
        parked = journal.park_unknown_versions(live_within=live_within, batch=batch, also_live=served)
    except Exception:
        log.warning("continuum: could not check for runs on versions no worker has", exc_info=True)
        return []
    missing = {(workflow, version_hash) for workflow, version_hash, _ in parked}
    with _warned_lock:
        fresh = missing - _warned
        _warned.intersection_update(missing)  # a version served again may warn again later
        _warned.update(missing)
    for workflow, version_hash, count in parked:
        telemetry.emit("unknown_version", workflow=workflow, version_hash=version_hash, runs=count)
        if (workflow, version_hash) not in fresh:
            continue
        log.warning(
            "continuum: %d run(s) of %s are pinned to version %s, which no live worker has; they stay "
            "suspended until a worker with that code starts (see `continuum versions`); "
            "this warning is not repeated while they wait",
            count,
            workflow,
            version_hash,
        )
    return parked
