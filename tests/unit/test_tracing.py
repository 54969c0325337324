"""OpenTelemetry spans: a stored trace context joins separate calls into one trace."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from continuum_celery import tracing
from continuum_celery.errors import ConfigurationError


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing enabled on a private provider that keeps finished spans in memory."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.enable_tracing(provider)
    yield memory
    tracing.disable_tracing()
    provider.shutdown()


def finished(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_spans_from_one_stored_context_share_one_trace(exporter: InMemorySpanExporter) -> None:
    stored = tracing.new_trace_context()
    assert "traceparent" in stored
    [root] = finished(exporter, "continuum.run")

    # Two separate calls, as two workers would make them, each from the stored carrier.
    with tracing.span("continuum.replay", trace_context=stored, attributes={"run_id": "r1"}):
        pass
    with tracing.span("continuum.activity", trace_context=stored):
        pass

    replay, activity = finished(exporter, "continuum.replay") + finished(exporter, "continuum.activity")
    assert root.context is not None and replay.context is not None
    assert activity.context is not None
    assert replay.context.trace_id == activity.context.trace_id == root.context.trace_id
    assert replay.parent is not None and activity.parent is not None
    assert replay.parent.span_id == activity.parent.span_id == root.context.span_id
    assert replay.attributes is not None and replay.attributes["run_id"] == "r1"


def test_separate_runs_get_separate_traces(exporter: InMemorySpanExporter) -> None:
    with tracing.span("continuum.replay", trace_context=tracing.new_trace_context()):
        pass
    with tracing.span("continuum.replay", trace_context=tracing.new_trace_context()):
        pass

    first, second = finished(exporter, "continuum.replay")
    assert first.context is not None and second.context is not None
    assert first.context.trace_id != second.context.trace_id


def test_context_taken_inside_a_span_names_that_span(exporter: InMemorySpanExporter) -> None:
    with tracing.span("continuum.start") as start:
        stored = tracing.new_trace_context()
    with tracing.span("continuum.replay", trace_context=stored):
        pass

    assert finished(exporter, "continuum.run") == []
    [replay] = finished(exporter, "continuum.replay")
    assert replay.parent is not None
    assert replay.parent.span_id == start.get_span_context().span_id


def test_span_without_stored_context_nests_in_the_current_span(
    exporter: InMemorySpanExporter,
) -> None:
    with tracing.span("continuum.replay") as outer, tracing.span("continuum.activity"):
        pass

    [activity] = finished(exporter, "continuum.activity")
    assert activity.parent is not None
    assert activity.parent.span_id == outer.get_span_context().span_id


def test_attributes_drop_none_and_exceptions_are_recorded(
    exporter: InMemorySpanExporter,
) -> None:
    with (
        pytest.raises(RuntimeError),
        tracing.span("continuum.activity", attributes={"activity": "charge", "queue": None}),
    ):
        raise RuntimeError("card declined")

    [activity] = finished(exporter, "continuum.activity")
    assert dict(activity.attributes or {}) == {"activity": "charge"}
    assert activity.status.status_code is StatusCode.ERROR
    assert [e.name for e in activity.events] == ["exception"]


def test_disabled_tracing_is_a_no_op(exporter: InMemorySpanExporter) -> None:
    tracing.disable_tracing()

    assert not tracing.tracing_enabled()
    assert tracing.new_trace_context() == {}
    with tracing.span("continuum.replay", trace_context={"traceparent": "junk"}) as current:
        assert current is None
    assert exporter.get_finished_spans() == ()


def test_missing_opentelemetry_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigurationError, match=r"pip install continuum-celery\[tracing\]"):
        tracing.enable_tracing()
    assert not tracing.tracing_enabled()


def test_the_package_works_without_opentelemetry_installed() -> None:
    # Simulate an install without the [tracing] extra: every opentelemetry import fails.
    code = (
        "import sys; sys.modules['opentelemetry'] = None; "
        "import continuum_celery.tracing as t; "
        "assert t.new_trace_context() == {}; "
        "span = t.span('continuum.start'); span.__enter__(); span.__exit__(None, None, None)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
