"""Prometheus exporter: telemetry events become samples, served over real HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from continuum_celery import telemetry
from continuum_celery.errors import ConfigurationError
from continuum_celery.metrics import PrometheusMetrics, enable_prometheus


@pytest.fixture
def metrics() -> Iterator[PrometheusMetrics]:
    """An installed exporter on its own registry, closed after the test."""
    exporter = PrometheusMetrics()
    exporter.install()
    yield exporter
    exporter.close()


def value(metrics: PrometheusMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def test_run_outcomes_are_counted_per_workflow(metrics: PrometheusMetrics) -> None:
    telemetry.emit("run_started", run_id="r1", workflow="orders")
    telemetry.emit("run_started", run_id="r2", workflow="orders")
    telemetry.emit("run_completed", run_id="r1", workflow="orders")
    telemetry.emit("run_failed", run_id="r2", workflow="orders")
    telemetry.emit("run_continued", run_id="r3", workflow="billing")
    telemetry.emit("run_cancelled", run_id="r4")

    runs = "continuum_runs_total"
    assert value(metrics, runs, workflow="orders", outcome="started") == 2
    assert value(metrics, runs, workflow="orders", outcome="completed") == 1
    assert value(metrics, runs, workflow="orders", outcome="failed") == 1
    assert value(metrics, runs, workflow="billing", outcome="continued") == 1
    assert value(metrics, runs, workflow="unknown", outcome="cancelled") == 1


def test_activity_outcomes_and_durations(metrics: PrometheusMetrics) -> None:
    telemetry.emit("activity_scheduled", run_id="r1", activity="charge", attempt=1)
    telemetry.emit("activity_started", run_id="r1", activity="charge", attempt=1)
    telemetry.emit("activity_failed", run_id="r1", activity="charge", attempt=1, duration=0.5)
    telemetry.emit("activity_retried", run_id="r1", activity="charge", attempt=1, retry_in=2.0)
    telemetry.emit("activity_completed", run_id="r1", activity="charge", attempt=2, duration=0.25)

    activities = "continuum_activities_total"
    for outcome in ("scheduled", "started", "failed", "retried", "completed"):
        assert value(metrics, activities, activity="charge", outcome=outcome) == 1
    durations = "continuum_activity_duration_seconds"
    assert value(metrics, durations + "_count", activity="charge") == 2
    assert value(metrics, durations + "_sum", activity="charge") == 0.75
    assert value(metrics, durations + "_bucket", activity="charge", le="0.25") == 1


def test_engine_events_feed_counters_histograms_and_gauge(metrics: PrometheusMetrics) -> None:
    telemetry.emit("timer_fired", run_id="r1", lateness=0.05)
    telemetry.emit("timer_fired", run_id="r2", lateness=12.0)
    telemetry.emit("signal_received", run_id="r1", signal="approved")
    telemetry.emit("lease_lost", run_id="r1", token=3)
    telemetry.emit("unknown_version", run_id="r1", workflow="orders", version_hash="abc")
    telemetry.emit("nondeterminism", run_id="r1", workflow="orders", seq=7)
    telemetry.emit("replay_step", run_id="r1", workflow="orders", duration=0.02, events=40)
    telemetry.emit("sweep", duration=0.3, due_backlog=17, dispatched=5)
    telemetry.emit("sweep", duration=0.1, due_backlog=4, dispatched=4)

    assert value(metrics, "continuum_timers_fired_total") == 2
    assert value(metrics, "continuum_timer_lateness_seconds_sum") == pytest.approx(12.05)
    assert value(metrics, "continuum_timer_lateness_seconds_bucket", le="0.05") == 1
    assert value(metrics, "continuum_signals_received_total") == 1
    assert value(metrics, "continuum_lease_lost_total") == 1
    assert value(metrics, "continuum_unknown_version_total", workflow="orders") == 1
    assert value(metrics, "continuum_nondeterminism_total", workflow="orders") == 1
    assert value(metrics, "continuum_replay_duration_seconds_count", workflow="orders") == 1
    assert value(metrics, "continuum_sweep_duration_seconds_count") == 2
    assert value(metrics, "continuum_sweep_due_backlog") == 4  # the latest sweep's backlog


def test_uninstall_stops_counting(metrics: PrometheusMetrics) -> None:
    telemetry.emit("lease_lost", run_id="r1", token=1)
    metrics.uninstall()
    telemetry.emit("lease_lost", run_id="r1", token=2)
    metrics.install()
    metrics.install()  # idempotent: still one subscription
    telemetry.emit("lease_lost", run_id="r1", token=3)

    assert value(metrics, "continuum_lease_lost_total") == 2


def test_serve_exposes_counters_over_http(metrics: PrometheusMetrics) -> None:
    port = metrics.serve(0)
    assert metrics.serve(0) == port  # already serving

    telemetry.emit("run_completed", run_id="r1", workflow="orders")
    body = scrape(port)

    assert 'continuum_runs_total{outcome="completed",workflow="orders"} 1.0' in body
    assert "continuum_timers_fired_total 0.0" in body


def test_enable_prometheus_installs_and_serves() -> None:
    exporter = enable_prometheus(port=0)
    try:
        telemetry.emit("signal_received", run_id="r1", signal="go")
        port = exporter.serve(0)
        assert "continuum_signals_received_total 1.0" in scrape(port)
    finally:
        exporter.close()
    exporter.close()  # idempotent


def test_serve_on_a_busy_port_is_a_configuration_error(metrics: PrometheusMetrics) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"127.0.0.1:{port}"):
            metrics.serve(port)


def test_missing_prometheus_client_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"pip install continuum-celery\[metrics\]"):
        PrometheusMetrics()
    with pytest.raises(ConfigurationError):
        enable_prometheus()


def test_importing_the_module_does_not_import_prometheus_client() -> None:
    code = "import sys, continuum_celery.metrics; sys.exit('prometheus_client' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
