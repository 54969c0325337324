"""The Prometheus exporter, switched on by a setting, counts real workflows (in-process and in worker processes)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from continuum_celery import Continuum, WorkflowFailed
from continuum_celery.embedded import embedded_engine, running_worker
from tests.support.flows_ops import failing, quick, timer_and_signal
from tests.support.stack import Stack, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples | None:
    """Every sample the exporter serves, keyed by (name, sorted labels); None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(key(name, **labels), 0.0)


Expected = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def settle(ports: tuple[int, ...], expected: Expected, timeout: float = 30) -> Samples:
    """Scrape until the samples summed over ``ports`` equal ``expected``; return the last scrape of the first port.

    A worker emits telemetry just after its commit, so a client may see a run finish a moment
    before the counters move.
    """
    mismatches: dict[str, tuple[float, float]] = {}

    def matches() -> Samples | None:
        scrapes = [scrape(p) or {} for p in ports]
        got = {key: sum(s.get(key, 0.0) for s in scrapes) for key in expected}
        mismatches.clear()
        mismatches.update({f"{k[0]}{dict(k[1])}": (got[k], v) for k, v in expected.items() if got[k] != v})
        return scrapes[0] if not mismatches else None

    try:
        return wait_until(matches, timeout, "the counters to settle")
    except AssertionError:
        raise AssertionError(f"metrics (got, expected): {mismatches}") from None


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


@pytest.fixture
def embedded(fresh_pg_url: str) -> Iterator[Continuum]:
    engine = embedded_engine(fresh_pg_url, name="metrics-live", metrics_port=0)
    try:
        yield engine
    finally:
        engine.journal.close()


def test_exporter_counts_a_workflow_run_by_the_embedded_engine(embedded: Continuum) -> None:
    with running_worker(embedded):
        assert embedded.threads.metrics is not None
        port = embedded.threads.metrics.serve(0)
        before = scrape(port)
        assert before is not None
        assert value(before, "continuum_timers_fired_total") == 0
        assert value(before, "continuum_runs_total", workflow="ops.quick", outcome="completed") == 0

        assert quick.start({"label": "m"}).result(timeout=30) == {"first": "m", "second": "two"}
        waiting = timer_and_signal.start({"seconds": 0.2})
        wait_until(lambda: any(e.kind.value == "signal_wait" for e in waiting.history()), 30, "the signal wait")
        waiting.signal("go", {"ok": True})
        assert waiting.result(timeout=30) == {"ok": True}
        with pytest.raises(WorkflowFailed):
            failing.start({"reason": "nope"}).result(timeout=30)
        embedded.sweep_once()  # what beat runs, here on demand

        echo, refuse = "tests.support.flows_ops.echo", "tests.support.flows_ops.refuse"
        after = settle(
            (port,),
            {
                key("continuum_runs_total", workflow="ops.quick", outcome="started"): 1,
                key("continuum_runs_total", workflow="ops.quick", outcome="completed"): 1,
                key("continuum_runs_total", workflow="ops.timer_and_signal", outcome="completed"): 1,
                key("continuum_runs_total", workflow="ops.failing", outcome="failed"): 1,
                key("continuum_activities_total", activity=echo, outcome="scheduled"): 3,
                key("continuum_activities_total", activity=echo, outcome="completed"): 3,
                key("continuum_activities_total", activity=refuse, outcome="failed"): 1,
                key("continuum_timers_fired_total"): 1,
                key("continuum_signals_received_total"): 1,
                key("continuum_timer_lateness_seconds_count"): 1,
                key("continuum_activity_duration_seconds_count", activity=echo): 3,
            },
        )
    assert value(after, "continuum_replay_duration_seconds_count", workflow="ops.quick") >= 1
    assert value(after, "continuum_sweep_duration_seconds_count") >= 1
    assert ("continuum_sweep_due_backlog", ()) in after
    # Closed with the worker: the port no longer answers.
    assert scrape(port) is None


def _two_free_ports() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise AssertionError("no two adjacent free ports")


def test_each_prefork_child_serves_its_own_port_from_the_setting(stack: Stack) -> None:
    stack.modules = ("tests.support.flows_ops",)
    stack.client()
    port = _two_free_ports()
    stack.worker(concurrency=2, CONTINUUM_METRICS_PORT=str(port))
    children = wait_until(
        lambda: [scrape(p) for p in (port, port + 1)] if scrape(port) and scrape(port + 1) else None,
        30,
        "both pool children to serve metrics",
    )
    assert all(
        value(c, "continuum_activities_total", activity="tests.support.flows_ops.echo", outcome="completed") == 0
        for c in children
    )

    for i in range(3):
        assert quick.start({"label": str(i)}).result(timeout=60)["first"] == str(i)

    echo = "tests.support.flows_ops.echo"
    settle(
        (port, port + 1),
        {
            key("continuum_runs_total", workflow="ops.quick", outcome="completed"): 3,
            key("continuum_activities_total", activity=echo, outcome="completed"): 6,
        },
    )
