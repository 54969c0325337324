"""The embedded default: a Celery worker, wake-up pump and sweep inside this process.

For a first run with no servers (SQLite + Celery's in-memory broker) and for
tests where a separate process is not the point. Production runs
``celery -A app worker -B`` instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

from .installer import Continuum
from .journal.schema import migrate

#: How often the in-process sweep runs, in seconds (beat's job in production).
EMBEDDED_SWEEP_INTERVAL = 1.0


def embedded_app(name: str = "continuum-embedded", broker_url: str = "memory://") -> Celery:
    """A Celery app for in-process use (the memory transport polled often, so steps are quick)."""
    app = Celery(name, broker=broker_url)
    app.conf.broker_transport_options = {"polling_interval": 0.01}
    app.conf.worker_hijack_root_logger = False
    return app


@contextmanager
def running_worker(
    engine: Continuum, *, concurrency: int = 4, sweep_interval: float = EMBEDDED_SWEEP_INTERVAL
) -> Iterator[Any]:
    """Run a Celery worker (thread pool), the wake-up pump and a sweep loop until the block ends.

    With ``metrics_port`` set, the engine's Prometheus exporter serves for as long (``engine.threads.metrics``).
    """
    from celery.contrib.testing.worker import start_worker

    stop = threading.Event()

    def sweep_loop() -> None:
        while not stop.wait(sweep_interval):
            engine.sweep_once()

    engine.load_workflow_modules()
    with start_worker(
        engine.app, pool="threads", concurrency=concurrency, perform_ping_check=False, shutdown_timeout=10
    ) as worker:
        engine.record_versions()
        engine.threads.start_pump()
        engine.threads.start_heartbeat()
        engine.threads.start_metrics()
        sweeper = threading.Thread(target=sweep_loop, name="continuum-embedded-sweep", daemon=True)
        sweeper.start()
        try:
            yield worker
        finally:
            stop.set()
            sweeper.join(timeout=5)
            engine.threads.stop_pump()
            engine.stop_watch()
            engine.threads.stop_heartbeat()
            engine.threads.stop_metrics()
            engine.cache.clear()


def embedded_engine(
    database_url: str, *, redis_url: str | None = None, name: str = "embedded", **settings: Any
) -> Continuum:
    """Migrate ``database_url`` and install an engine on an in-memory-broker Celery app.

    Version routing is off by default here: one process holds every version it serves.
    """
    migrate(database_url)
    settings.setdefault("version_routing", False)
    return Continuum(
        embedded_app(f"continuum-{name}"), database_url=database_url, redis_url=redis_url, name=name, **settings
    )
