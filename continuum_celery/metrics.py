"""Optional Prometheus exporter fed by telemetry events.

Off unless enabled; ``prometheus-client`` is imported only then
(``pip install continuum-celery[metrics]``)::

    from continuum_celery.metrics import enable_prometheus

    enable_prometheus(port=9464)          # in each worker, e.g. on worker_process_init

Exported series (all prefixed ``continuum_``):

- counters ``runs_total{workflow,outcome}`` (started, completed, failed, cancelled,
  continued), ``activities_total{activity,outcome}`` (scheduled, started, completed,
  failed, retried), ``timers_fired_total``, ``signals_received_total``,
  ``lease_lost_total``, ``unknown_version_total{workflow}``,
  ``nondeterminism_total{workflow}``;
- histograms ``timer_lateness_seconds``, ``activity_duration_seconds{activity}``,
  ``replay_duration_seconds{workflow}``, ``sweep_duration_seconds``;
- gauge ``sweep_due_backlog``.

A label whose value the event does not carry reads ``unknown``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from continuum_celery import telemetry
from continuum_celery.errors import ConfigurationError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

PREFIX = "continuum_"
UNKNOWN_LABEL = "unknown"
# Seconds. Past Prometheus' 10 s default top bucket, because activities may run minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# Seconds, up to minutes: a timer whose wake-up was lost waits for the next beat sweep.
LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigurationError(
            "Prometheus metrics need prometheus-client: run `pip install continuum-celery[metrics]`",
            missing="prometheus-client",
        ) from exc
    return prometheus_client


def _label(value: Any) -> str:
    return UNKNOWN_LABEL if value is None else str(value)


class PrometheusMetrics:
    """The continuum metrics on one Prometheus registry, updated from telemetry.

    Creating it only defines the metrics; :meth:`install` starts counting and
    :meth:`serve` exposes them over HTTP.

    Attributes:
        registry: the ``CollectorRegistry`` holding the metrics.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Define the metrics on ``registry`` (a fresh ``CollectorRegistry`` by default).

        Raises:
            ConfigurationError: prometheus-client is not installed.
        """
        prom = _prometheus()
        self.registry: CollectorRegistry = registry if registry is not None else prom.CollectorRegistry()
        reg = self.registry
        self.runs = prom.Counter(
            PREFIX + "runs_total",
            "Workflow runs by outcome.",
            ["workflow", "outcome"],
            registry=reg,
        )
        self.activities = prom.Counter(
            PREFIX + "activities_total",
            "Activity attempts by outcome.",
            ["activity", "outcome"],
            registry=reg,
        )
        self.timers_fired = prom.Counter(PREFIX + "timers_fired_total", "Durable timers fired.", registry=reg)
        self.signals_received = prom.Counter(
            PREFIX + "signals_received_total", "Signals delivered to runs.", registry=reg
        )
        self.lease_lost = prom.Counter(PREFIX + "lease_lost_total", "Writes refused for a stale lease.", registry=reg)
        self.unknown_version = prom.Counter(
            PREFIX + "unknown_version_total",
            "Runs this worker could not resume for lack of their version.",
            ["workflow"],
            registry=reg,
        )
        self.nondeterminism = prom.Counter(
            PREFIX + "nondeterminism_total",
            "Replays that did not reproduce the run's history.",
            ["workflow"],
            registry=reg,
        )
        self.timer_lateness = prom.Histogram(
            PREFIX + "timer_lateness_seconds",
            "Delay between a timer's due time and its firing.",
            buckets=LATENESS_BUCKETS,
            registry=reg,
        )
        self.activity_duration = prom.Histogram(
            PREFIX + "activity_duration_seconds",
            "Duration of finished activity attempts.",
            ["activity"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.replay_duration = prom.Histogram(
            PREFIX + "replay_duration_seconds",
            "Duration of replay steps.",
            ["workflow"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.sweep_duration = prom.Histogram(
            PREFIX + "sweep_duration_seconds",
            "Duration of beat sweeps.",
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.sweep_due_backlog = prom.Gauge(
            PREFIX + "sweep_due_backlog",
            "Due items (timers, dispatches, expired leases) found by the last sweep.",
            registry=reg,
        )
        self._unsubscribe: Callable[[], None] | None = None
        self._server: WSGIServer | None = None

    def install(self) -> None:
        """Start updating the metrics from telemetry events. Idempotent."""
        if self._unsubscribe is None:
            self._unsubscribe = telemetry.subscribe(self.record)

    def uninstall(self) -> None:
        """Stop updating the metrics; their current values stay readable."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Expose the registry over HTTP in a daemon thread.

        Args:
            port: TCP port; ``0`` picks a free one.
            addr: address to bind; the loopback default keeps metrics private.

        Returns:
            The bound port. A second call returns the port already served.

        Raises:
            ConfigurationError: the address cannot be bound (port in use, bad address).
        """
        if self._server is None:
            try:
                self._server, _thread = _prometheus().start_http_server(port, addr=addr, registry=self.registry)
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot serve Prometheus metrics on {addr}:{port}: {exc}",
                    addr=addr,
                    port=port,
                ) from exc
        return int(self._server.server_port)

    def close(self) -> None:
        """Uninstall and stop the HTTP server, if any."""
        self.uninstall()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def record(self, event: telemetry.TelemetryEvent) -> None:
        """Update the metrics from one telemetry event (the installed handler)."""
        name, fields = event.name, event.fields
        if name.startswith("run_"):
            self.runs.labels(_label(event.workflow), name[4:]).inc()
        elif name.startswith("activity_"):
            activity = _label(fields.get("activity"))
            self.activities.labels(activity, name[9:]).inc()
            duration = fields.get("duration")
            if duration is not None and name in ("activity_completed", "activity_failed"):
                self.activity_duration.labels(activity).observe(duration)
        elif name == "timer_fired":
            self.timers_fired.inc()
            if fields.get("lateness") is not None:
                self.timer_lateness.observe(fields["lateness"])
        elif name == "signal_received":
            self.signals_received.inc()
        elif name == "lease_lost":
            self.lease_lost.inc()
        elif name == "unknown_version":
            self.unknown_version.labels(_label(event.workflow)).inc()
        elif name == "nondeterminism":
            self.nondeterminism.labels(_label(event.workflow)).inc()
        elif name == "replay_step":
            if fields.get("duration") is not None:
                self.replay_duration.labels(_label(event.workflow)).observe(fields["duration"])
        elif name == "sweep":
            if fields.get("duration") is not None:
                self.sweep_duration.observe(fields["duration"])
            if fields.get("due_backlog") is not None:
                self.sweep_due_backlog.set(fields["due_backlog"])


def enable_prometheus(port: int | None = None, addr: str = "127.0.0.1") -> PrometheusMetrics:
    """Create a :class:`PrometheusMetrics` on its own registry, install it, and maybe serve it.

    Args:
        port: serve ``/metrics`` on this port (``0``: any free port); ``None`` does not
            serve, e.g. when the application exposes ``registry`` itself.
        addr: address to bind when serving.

    Returns:
        The installed exporter; call :meth:`PrometheusMetrics.close` to undo.

    Raises:
        ConfigurationError: prometheus-client is not installed, or the port cannot be bound.
    """
    metrics = PrometheusMetrics()
    if port is not None:
        metrics.serve(port, addr)
    metrics.install()
    return metrics


__all__ = ["PrometheusMetrics", "enable_prometheus"]
