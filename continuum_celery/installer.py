"""``Continuum(app, ...)``: install the engine into any Celery app.

It registers the internal tasks, a beat entry for the sweep, worker hooks
(dispose inherited database connections after fork, record loaded workflow
versions and start the wake-up pump at boot) and a client for starting runs.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import signals
from celery.canvas import Signature
from celery.utils.log import current_process_index

from . import runtime
from .cache import ExecutionCache
from .canvas import CanvasSender
from .client import Client, JournalRunHandle
from .config import Settings
from .dispatch import CANVAS_WORKFLOW, START_TASK, SWEEP_TASK, Dispatcher
from .errors import ConfigurationError, InvalidArgument
from .ids import validate_run_id
from .journal.base import Journal
from .journal.sql import SQLJournal
from .leases import LeaseRenewer
from .notify import LocalNotifier, Notifier, RedisNotifier
from .redis_guard import guarded_redis
from .routing import (
    Periodic,
    VersionHeartbeat,
    base_queue,
    consume_engine_queues,
    log_worker_plan,
    report_unknown_versions,
)
from .serialization import check_json
from .stepper import Stepper
from .tasks import emit_sweep, register_tasks, timed
from .versioning import registry as workflow_registry
from .wakeups import LocalWakeups, RedisWakeups, WakeupPump, Wakeups

if TYPE_CHECKING:
    from celery import Celery

    from .metrics import PrometheusMetrics

log = logging.getLogger(__name__)



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
        self._pump: WakeupPump | None = None
        self._heartbeat: VersionHeartbeat | None = None
        self._worker_sweep: Periodic | None = None
        self._stepper: Stepper | None = None
        self._unwatch: Callable[[], None] | None = None
        self.metrics: PrometheusMetrics | None = None
        register_tasks(app, self)
        app.conf.beat_schedule = {
            **(app.conf.beat_schedule or {}),
            f"continuum-sweep-{self.settings.name}": {
                "task": SWEEP_TASK,
                "schedule": self.settings.sweep_interval,
                **({"options": {"queue": self.settings.queue}} if self.settings.queue else {}),
            },
        }
        if self.settings.queue:
            routes = {f"continuum.{n}": {"queue": self.settings.queue} for n in ("replay", "start", "sweep")}
            app.conf.task_routes = [routes, *(_as_list(app.conf.task_routes))]
        self._connect_signals()
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
        return RedisWakeups(client, self.settings.key_prefix + "wakeups") if client is not None else LocalWakeups()

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

    def start_heartbeat(self) -> None:
        """Refresh this worker's served versions every ``version_heartbeat`` seconds (a daemon thread)."""
        if self._heartbeat is None:
            self._heartbeat = VersionHeartbeat(self.record_versions, self.settings.version_heartbeat)
            self._heartbeat.start()

    def stop_heartbeat(self, retract: bool = False) -> None:
        """Stop the heartbeat; with ``retract``, also mark this worker's versions stopped (a clean shutdown)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if retract:
            try:
                self.journal.retract_versions(self.hostname)
            except Exception:  # the rows then expire after version_ttl
                log.warning("continuum: could not retract this worker's versions", exc_info=True)

    def start_worker_sweep(self) -> None:
        """Sweep from this worker every ``worker_sweep_interval`` seconds (jittered; a daemon thread).

        Every worker does, leaderless: a run orphaned by a dead worker resumes once any worker
        is alive, beat or no beat. Concurrent sweeps split the due rows (``SKIP LOCKED``), and a
        duplicate message finds its row claimed, so any number of workers and beats is safe.
        """
        if self._worker_sweep is None and self.settings.worker_sweep_interval > 0:
            self._worker_sweep = Periodic(
                self.sweep_once,
                self.settings.worker_sweep_interval,
                name="continuum-worker-sweep",
                what="worker sweep",
                jitter=0.5,
            )
            self._worker_sweep.start()

    def stop_worker_sweep(self) -> None:
        if self._worker_sweep is not None:
            self._worker_sweep.stop()
            self._worker_sweep = None

    def start_pump(self) -> None:
        """Start the wake-up pump thread of this process (timers and retries on time)."""
        if self._pump is None:
            self._pump = WakeupPump(self.wakeups, self.dispatcher.dispatch_member)
            self._pump.start()

    def stop_pump(self) -> None:
        if self._pump is not None:
            self._pump.stop()
            self._pump = None

    def start_metrics(self, offset: int = 0) -> int | None:
        """Serve this process's Prometheus metrics on ``metrics_port + offset``, if ``metrics_port`` is set.

        Idempotent. Returns the bound port (``metrics_port=0`` binds any free one), or None when off.

        Raises:
            ConfigurationError: prometheus-client is missing or the port cannot be bound.
        """
        port = self.settings.metrics_port
        if port is None:
            return None
        if self.metrics is None:
            from .metrics import enable_prometheus

            self.metrics = enable_prometheus(port + offset if port else 0, addr=self.settings.metrics_addr)
            bound = self.metrics.serve(0)  # already serving: returns the bound port
            log.info("continuum: Prometheus metrics on http://%s:%s/metrics", self.settings.metrics_addr, bound)
        return self.metrics.serve(0)

    def stop_metrics(self) -> None:
        """Stop serving and counting metrics in this process."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def _connect_signals(self) -> None:
        def after_fork(sender: Any = None, **_: Any) -> None:
            # Celery passes the worker's node name: leases then name a node that `inspect ping` answers for.
            if isinstance(sender, str) and sender:
                self.hostname = sender
            # Connections inherited from the parent must not be shared with it.
            if self._journal is not None and isinstance(self._journal, SQLJournal):
                self._journal.engine.dispose(close=False)
            self._redis = None
            self.wakeups = self._make_wakeups()
            self.notifier = self._make_notifier()
            self.dispatcher.wakeups = self.wakeups
            self._stepper = None
            self._unwatch = None  # the parent's watch thread did not survive the fork
            if self.metrics is not None:  # the parent's exporter; its server thread did not survive the fork
                self.metrics.uninstall()
                self.metrics = None
            self.start_metrics(current_process_index(base=0) or 0)

        def on_init(sender: Any = None, **_: Any) -> None:
            if _app_of(sender) is not self.app:
                return
            # Pool children inherit this: they send the task events of the runs they end.
            self.task_events = bool(getattr(sender, "task_events", self.task_events))
            self.load_workflow_modules()
            routed = self.settings.version_routing
            hashes = {h for _, h in workflow_registry.served()} if routed else set()
            consume_engine_queues(self.app, base_queue(self.app, self.settings.queue), hashes)
            try:
                self.journal  # noqa: B018 - opening the journal checks its schema
            except ConfigurationError as exc:
                # Fail in the main process, before the pool starts: a worker on an unusable
                # journal would take tasks off the queue and drop them.
                raise SystemExit(f"continuum: the worker cannot start: {exc}") from exc

        def on_ready(sender: Any = None, **_: Any) -> None:
            if _app_of(sender) is not self.app:
                return
            self.hostname = getattr(sender, "hostname", None) or self.hostname
            # The built-in durable-canvas workflow is on every worker: the plan names the user's.
            served = [(d.name, d.version, h) for d, h in workflow_registry.served() if d.name != CANVAS_WORKFLOW]
            log_worker_plan(self.app, base_queue(self.app, self.settings.queue), served)
            try:
                self.record_versions()
            except ConfigurationError:
                log.error("continuum: the journal is not usable; run `continuum migrate`", exc_info=True)
                raise
            self.start_pump()
            self.start_heartbeat()
            self.start_worker_sweep()
            if not _forks_children(getattr(sender, "pool", None)):
                self.start_metrics()  # thread or green pools run tasks in this process

        def on_shutdown(sender: Any = None, **_: Any) -> None:
            self.stop_pump()
            self.stop_watch()
            if _app_of(sender) is self.app:
                self.stop_worker_sweep()
                self.stop_heartbeat(retract=True)

        signals.worker_process_init.connect(after_fork, weak=False)
        signals.worker_init.connect(on_init, weak=False)
        signals.worker_ready.connect(on_ready, weak=False)
        signals.worker_shutdown.connect(on_shutdown, weak=False)


def _app_of(sender: Any) -> Any:
    return getattr(sender, "app", None)


def _forks_children(pool: Any) -> bool:
    """Whether ``pool`` runs tasks in child processes (which then serve their own metrics)."""
    from celery.concurrency.prefork import TaskPool

    return isinstance(pool, TaskPool)


def _as_list(routes: Any) -> list[Any]:
    if not routes:
        return []
    return list(routes) if isinstance(routes, (list, tuple)) else [routes]


def current(name: str | None = None) -> Continuum:
    """The installed engine (by name, or the most recent); the default app's if none was installed."""
    engine = runtime.current(name)
    assert isinstance(engine, Continuum)
    return engine


def engines_of(app: Any) -> list[Continuum]:
    """The engines installed on ``app`` (usually one), in installation order."""
    return [engine for engine in runtime.installed() if isinstance(engine, Continuum) and engine.app is app]
