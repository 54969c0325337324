"""What ``Continuum(app)`` adds to a Celery app: its tasks, their routes, the beat entry and the worker hooks.

The hooks follow a worker's life through Celery's signals: a forked pool child
drops what it inherited, a booting worker loads its workflows and checks its
journal before the pool takes tasks, a ready worker records the versions it
serves and starts its threads, a worker shutting down stops them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from celery import signals
from celery.utils.log import current_process_index

from .dispatch import CANVAS_WORKFLOW, SWEEP_TASK
from .errors import ConfigurationError, JournalUnavailable
from .lifecycle import ProcessThreads
from .routing import base_queue, consume_engine_queues, log_worker_plan
from .tasks import TaskEngine, register_tasks
from .versioning import registry as workflow_registry

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


class WiredEngine(TaskEngine, Protocol):
    """What the wiring needs of its engine (:class:`~continuum_celery.installer.Continuum`)."""

    app: Celery
    hostname: str
    task_events: bool
    threads: ProcessThreads

    def after_fork(self) -> None: ...

    def load_workflow_modules(self) -> None: ...

    def record_versions(self) -> None: ...

    def stop_watch(self) -> None: ...


def wire(app: Celery, engine: WiredEngine) -> None:
    """Register the internal tasks on ``app``, route them, add the sweep's beat entry, connect the hooks."""
    settings = engine.settings
    register_tasks(app, engine)
    app.conf.beat_schedule = {
        **(app.conf.beat_schedule or {}),
        f"continuum-sweep-{settings.name}": {
            "task": SWEEP_TASK,
            "schedule": settings.sweep_interval,
            **({"options": {"queue": settings.queue}} if settings.queue else {}),
        },
    }
    if settings.queue:
        routes = {f"continuum.{n}": {"queue": settings.queue} for n in ("replay", "start", "sweep")}
        app.conf.task_routes = [routes, *(_as_list(app.conf.task_routes))]
    hooks = _WorkerHooks(engine)
    signals.worker_process_init.connect(hooks.after_fork, weak=False)
    signals.worker_init.connect(hooks.on_init, weak=False)
    signals.worker_ready.connect(hooks.on_ready, weak=False)
    signals.worker_shutdown.connect(hooks.on_shutdown, weak=False)


class _WorkerHooks:
    """The engine's receivers of Celery's worker signals (each ignores workers of other apps)."""

    def __init__(self, engine: WiredEngine) -> None:
        self.engine = engine

    def after_fork(self, sender: Any = None, **_: Any) -> None:
        engine = self.engine
        # Celery passes the worker's node name: leases then name a node that `inspect ping` answers for.
        if isinstance(sender, str) and sender:
            engine.hostname = sender
        engine.after_fork()
        engine.threads.after_fork()
        engine.threads.start_metrics(current_process_index(base=0) or 0)

    def on_init(self, sender: Any = None, **_: Any) -> None:
        engine = self.engine
        if _app_of(sender) is not engine.app:
            return
        # Pool children inherit this: they send the task events of the runs they end.
        engine.task_events = bool(getattr(sender, "task_events", engine.task_events))
        engine.load_workflow_modules()
        queue = base_queue(engine.app, engine.settings.queue)
        hashes = {h for _, h in workflow_registry.served()} if engine.settings.version_routing else set()
        consume_engine_queues(engine.app, queue, hashes)
        try:
            engine.journal  # noqa: B018 - opening the journal checks its schema
        except (ConfigurationError, JournalUnavailable) as exc:
            # Fail in the main process, before the pool starts: a worker on an unusable
            # journal would take tasks off the queue and drop them.
            raise SystemExit(f"continuum: the worker cannot start: {exc}") from exc

    def on_ready(self, sender: Any = None, **_: Any) -> None:
        engine = self.engine
        if _app_of(sender) is not engine.app:
            return
        engine.hostname = getattr(sender, "hostname", None) or engine.hostname
        # The built-in durable-canvas workflow is on every worker: the plan names the user's.
        served = [(d.name, d.version, h) for d, h in workflow_registry.served() if d.name != CANVAS_WORKFLOW]
        log_worker_plan(engine.app, base_queue(engine.app, engine.settings.queue), served)
        try:
            engine.record_versions()
        except (ConfigurationError, JournalUnavailable):
            log.error("continuum: the journal is not usable; run `continuum migrate`", exc_info=True)
            raise
        engine.threads.start_pump()
        engine.threads.start_heartbeat()
        engine.threads.start_worker_sweep()
        if not _forks_children(getattr(sender, "pool", None)):
            engine.threads.start_metrics()  # thread or green pools run tasks in this process

    def on_shutdown(self, sender: Any = None, **_: Any) -> None:
        engine = self.engine
        engine.threads.stop_pump()
        engine.stop_watch()
        if _app_of(sender) is engine.app:
            engine.threads.stop_worker_sweep()
            engine.threads.stop_heartbeat(retract=True)


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
