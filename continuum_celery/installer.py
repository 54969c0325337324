"""``Continuum(app, ...)``: install the engine into any Celery app.

The engine composes its parts from the settings (journal, stepper, dispatcher,
wake-ups, notifier, client), builds the ones that hold connections lazily, in
the process that uses them, and registers itself as the current engine. What it
adds to the Celery app is in :mod:`.wiring`; the threads a worker process runs
beside its tasks are in :mod:`.lifecycle`.
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery.canvas import Signature

from . import runtime
from .cache import ExecutionCache
from .canvas import CanvasSender
from .client import Client, JournalRunHandle
from .config import Settings
from .dispatch import START_TASK, Dispatcher
from .errors import InvalidArgument
from .ids import validate_run_id
from .journal.base import Journal
from .journal.sql import SQLJournal
from .leases import LeaseRenewer
from .lifecycle import ProcessThreads
from .notify import LocalNotifier, Notifier, RedisNotifier
from .redis_guard import guarded_redis
from .routing import report_unknown_versions
from .serialization import check_json
from .stepper import Stepper
from .tasks import emit_sweep, timed
from .versioning import registry as workflow_registry
from .wakeups import DEFAULT_POLL_INTERVAL, LocalWakeups, RedisWakeups, Wakeups
from .wiring import wire

if TYPE_CHECKING:
    from celery import Celery


class Continuum(runtime.Runtime):
    """The engine bound to one Celery app.

    Args:
        app: the Celery app whose workers run replays and activities.
        database_url: journal URL (env ``CONTINUUM_DATABASE_URL``; default a local SQLite file).
        redis_url: Redis for wake-ups and notifications (env ``CONTINUUM_REDIS_URL``); None: sweep only.
        name: instance name (Redis key prefix), when several engines share servers.
        **settings: any other :class:`~continuum_celery.config.Settings` field.
    """

    def __init__(
        self,
        app: Celery,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        name: str | None = None,
        journal: Journal | None = None,
        **settings: Any,
    ) -> None:
        self.app = app
        self.settings = Settings.resolve(
            app.conf, database_url=database_url, redis_url=redis_url, name=name, **settings
        )
        self.hostname = socket.gethostname()
        self._journal = journal
        self._lock = threading.RLock()
        self._redis: Any = None
        self.wakeups: Wakeups = self._make_wakeups()
        self.notifier: Notifier = self._make_notifier()
        self.dispatcher = Dispatcher(
            app,
            self.settings.queue,
            self.wakeups,
            version_routing=self.settings.version_routing,
            publish_timeout=self.settings.publish_timeout,
        )
        self.cache = ExecutionCache(self.settings.cache_size)
        self.client = Client(self)
        #: Whether this process's worker sends task events (``-E``); set at worker boot.
        self.task_events = bool(app.conf.worker_send_task_events)
        self.canvas = CanvasSender(
            app,
            lambda: self.journal,
            hold=self.settings.redispatch_after,
            batch=self.settings.sweep_batch,
            task_events=lambda: self.task_events,
            hostname=lambda: self.hostname,
        )
        self._stepper: Stepper | None = None
        self._unwatch: Callable[[], None] | None = None
        #: This process's background threads (pump, heartbeat, worker sweep, metrics exporter).
        self.threads = ProcessThreads(self)
        wire(app, self)
        runtime.install(self, self.settings.name)

    # ---- lazily built parts (after fork, in the process that uses them) -------------------

    @property
    def owner(self) -> str:
        """Who holds leases taken by this process: node name and pid (pool children differ)."""
        return f"{self.hostname}:{os.getpid()}"

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            with self._lock:
                if self._journal is None:
                    self._journal = SQLJournal(
                        self.settings.database_url,
                        activity_timeout=self.settings.activity_timeout,
                        queue=self.settings.queue,
                        snapshot_every=self.settings.snapshot_every,
                    )
        return self._journal

    @property
    def stepper(self) -> Stepper:
        if self._stepper is None:
            with self._lock:
                if self._stepper is None:
                    journal = self.journal
                    self._stepper = Stepper(
                        journal=journal,
                        registry=workflow_registry,
                        dispatcher=self.dispatcher,
                        notifier=self.notifier,
                        cache=self.cache,
                        renewer=LeaseRenewer(journal, self.settings.lease_ttl),
                        owner=self.owner,
                        lease_ttl=self.settings.lease_ttl,
                        max_payload_bytes=self.settings.max_payload_bytes,
                        queue=self.settings.queue,
                        inline_activities=self.settings.inline_activities,
                    )
                    # Runs that end in another process would otherwise keep their cached bodies parked here.
                    self._unwatch = self.notifier.watch_finished(self.cache.discard)
        return self._stepper

    def stop_watch(self) -> None:
        """Stop following finished runs (the cache then relies on its size bound alone)."""
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None

    def _redis_client(self) -> Any:
        if self._redis is None and self.settings.redis_url:
            self._redis = guarded_redis(
                self.settings.redis_url, timeout=self.settings.redis_timeout, cooldown=self.settings.redis_cooldown
            )
        return self._redis

    def _make_wakeups(self) -> Wakeups:
        client = self._redis_client()
        if client is None:
            return LocalWakeups()
        # The pump's blocking read stays well inside the guarded client's read timeout.
        block = min(DEFAULT_POLL_INTERVAL, self.settings.redis_timeout / 2)
        return RedisWakeups(client, self.settings.key_prefix + "wakeups", longest_block=block)

    def _make_notifier(self) -> Notifier:
        client = self._redis_client()
        return RedisNotifier(client, self.settings.key_prefix) if client is not None else LocalNotifier()

    # ---- operations ----------------------------------------------------------------------

    def start_run(
        self, definition: Any, input: Any, *, run_id: str | None = None, timeout: float | None = None
    ) -> JournalRunHandle:
        return self.client.start(definition, input, run_id=run_id, timeout=timeout)

    def get_run(self, run_id: str) -> JournalRunHandle:
        return self.client.get(run_id)

    def start_signature(self, workflow: str, args: tuple[Any, ...], *, run_id: str | None = None) -> Signature:
        """A ``continuum.start`` signature for use in chains, groups and chords.

        Monitors show it under the workflow's name (``shadow``), and see ``input=<hidden>``
        instead of the input, which may hold secrets.
        """
        if len(args) > 1:
            raise InvalidArgument(
                f"workflow {workflow} takes one input, got {len(args)} values: pack them in one dict."
            )
        if run_id is not None:
            validate_run_id(run_id)
        if args:
            check_json(args[0], f"input of workflow {workflow}", self.settings.max_payload_bytes)
        options: dict[str, Any] = {"queue": self.settings.queue} if self.settings.queue else {}
        options.update(argsrepr=f"{workflow} input=<hidden>", kwargsrepr="{}", shadow=workflow)
        return self.app.signature(START_TASK, args=args, kwargs={"workflow": workflow, "run_id": run_id}, **options)

    def sweep_once(self) -> int:
        """One sweep: park runs whose version no live worker has, send every due dispatch; returns how many."""
        report_unknown_versions(
            self.journal,
            live_within=self.settings.version_ttl,
            batch=self.settings.sweep_batch,
            served={(d.name, h) for d, h in workflow_registry.served()},
        )
        dispatches, duration = timed(
            lambda: self.journal.sweep(batch=self.settings.sweep_batch, redispatch_after=self.settings.redispatch_after)
        )
        self.dispatcher.send(dispatches)
        self.canvas.send_due()
        emit_sweep(len(dispatches), self.journal.due_backlog(), duration)
        return len(dispatches)

    def load_workflow_modules(self) -> None:
        """Import the configured workflow modules so their definitions register."""
        for module in self.settings.workflow_modules:
            importlib.import_module(module)

    def record_versions(self) -> None:
        """Upsert the versions this process serves (loaded and declared compatible) into the journal.

        Runs parked because no worker had one of these versions are dispatched again at once.
        """
        served = [
            (d.name, version_hash, d.version, getattr(d.fn, "__module__", ""))
            for d, version_hash in workflow_registry.served()
        ]
        self.dispatcher.send(self.journal.upsert_versions(self.hostname, served))

    def after_fork(self) -> None:
        """Drop what a forked pool child inherited: database and Redis connections, the stepper, the watch."""
        # Connections inherited from the parent must not be shared with it.
        if self._journal is not None and isinstance(self._journal, SQLJournal):
            self._journal.engine.dispose(close=False)
        self._redis = None
        self.wakeups = self._make_wakeups()
        self.notifier = self._make_notifier()
        self.dispatcher.wakeups = self.wakeups
        self._stepper = None
        self._unwatch = None  # the parent's watch thread did not survive the fork


def current(name: str | None = None) -> Continuum:
    """The installed engine (by name, or the most recent); the default app's if none was installed."""
    engine = runtime.current(name)
    assert isinstance(engine, Continuum)
    return engine


def engines_of(app: Any) -> list[Continuum]:
    """The engines installed on ``app`` (usually one), in installation order."""
    return [engine for engine in runtime.installed() if isinstance(engine, Continuum) and engine.app is app]
