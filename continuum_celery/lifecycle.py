"""The threads a worker process runs beside its tasks, started and stopped as the process lives.

The wake-up pump (timers and retries on time), the version heartbeat (the versions
this worker serves, kept live in the journal), the worker sweep (leaderless
recovery, beat or no beat) and the Prometheus exporter. Each starts at most once
per process; a forked pool child starts its own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from .config import Settings
from .dispatch import Dispatcher
from .journal.base import Journal
from .routing import Periodic, VersionHeartbeat
from .wakeup_pump import WakeupPump
from .wakeups import Wakeups

if TYPE_CHECKING:
    from .metrics import PrometheusMetrics

log = logging.getLogger(__name__)


class ThreadedEngine(Protocol):
    """What the threads need of their engine (:class:`~continuum_celery.installer.Continuum`)."""

    settings: Settings
    dispatcher: Dispatcher
    hostname: str

    @property
    def wakeups(self) -> Wakeups: ...

    @property
    def journal(self) -> Journal: ...

    def record_versions(self) -> None: ...

    def sweep_once(self) -> int: ...


class ProcessThreads:
    """The background threads of one process, for one engine."""

    def __init__(self, engine: ThreadedEngine) -> None:
        self._engine = engine
        self._pump: WakeupPump | None = None
        self._heartbeat: VersionHeartbeat | None = None
        self._worker_sweep: Periodic | None = None
        self.metrics: PrometheusMetrics | None = None

    def start_heartbeat(self) -> None:
        """Refresh this worker's served versions every ``version_heartbeat`` seconds (a daemon thread)."""
        if self._heartbeat is None:
            self._heartbeat = VersionHeartbeat(self._engine.record_versions, self._engine.settings.version_heartbeat)
            self._heartbeat.start()

    def stop_heartbeat(self, *, retract: bool = False) -> None:
        """Stop the heartbeat; with ``retract``, also mark this worker's versions stopped (a clean shutdown)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if retract:
            try:
                self._engine.journal.retract_versions(self._engine.hostname)
            except Exception:  # the rows then expire after version_ttl
                log.warning("continuum: could not retract this worker's versions", exc_info=True)

    def start_worker_sweep(self) -> None:
        """Sweep from this worker every ``worker_sweep_interval`` seconds (jittered; a daemon thread).

        Every worker does, leaderless: a run orphaned by a dead worker resumes once any worker
        is alive, beat or no beat. Concurrent sweeps split the due rows (``SKIP LOCKED``), and a
        duplicate message finds its row claimed, so any number of workers and beats is safe.
        """
        interval = self._engine.settings.worker_sweep_interval
        if self._worker_sweep is None and interval > 0:
            self._worker_sweep = Periodic(
                self._engine.sweep_once, interval, name="continuum-worker-sweep", what="worker sweep", jitter=0.5
            )
            self._worker_sweep.start()

    def stop_worker_sweep(self) -> None:
        if self._worker_sweep is not None:
            self._worker_sweep.stop()
            self._worker_sweep = None

    def start_pump(self) -> None:
        """Start the wake-up pump thread of this process (timers and retries on time)."""
        if self._pump is None:
            self._pump = WakeupPump(self._engine.wakeups, self._engine.dispatcher.dispatch_member)
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
        settings = self._engine.settings
        port = settings.metrics_port
        if port is None:
            return None
        if self.metrics is None:
            from .metrics import enable_prometheus

            self.metrics = enable_prometheus(port + offset if port else 0, addr=settings.metrics_addr)
            bound = self.metrics.serve(0)  # already serving: returns the bound port
            log.info("continuum: Prometheus metrics on http://%s:%s/metrics", settings.metrics_addr, bound)
        return self.metrics.serve(0)

    def stop_metrics(self) -> None:
        """Stop serving and counting metrics in this process."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def after_fork(self) -> None:
        """Forget the parent's exporter in a forked child: its server thread did not survive the fork."""
        if self.metrics is not None:
            self.metrics.uninstall()
            self.metrics = None
