"""A run's spans join one trace across its steps and activities; engine log records carry the run."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from continuum_celery import Continuum, WorkflowFailed
from continuum_celery.embedded import embedded_engine, running_worker
from tests.support.flows_ops import failing, quick
from tests.unit.test_tracing import exporter  # noqa: F401 - the fixture that keeps spans in memory


@pytest.fixture
def engine(fresh_pg_url: str) -> Iterator[Continuum]:
    engine = embedded_engine(fresh_pg_url, name="tracing-live")
    try:
        yield engine
    finally:
        engine.journal.close()


def test_a_runs_spans_share_the_trace_stored_on_the_run(engine: Continuum, request: pytest.FixtureRequest) -> None:
    memory: InMemorySpanExporter = request.getfixturevalue("exporter")
    with running_worker(engine):
        first = quick.start({"label": "a"})
        second = quick.start({"label": "b"})
        assert first.result(timeout=30)["first"] == "a"
        assert second.result(timeout=30)["first"] == "b"

    def of(run_id: str, name: str) -> list:  # type: ignore[type-arg]
        return [
            s
            for s in memory.get_finished_spans()
            if s.name == name and s.attributes is not None and s.attributes.get("continuum.run_id") == run_id
        ]

    for run in (first, second):
        stored = engine.journal.get_run(run.id).trace_context
        assert "traceparent" in stored
        trace_id = int(stored["traceparent"].split("-")[1], 16)
        replays, activities = of(run.id, "continuum.replay"), of(run.id, "continuum.activity")
        [start] = of(run.id, "continuum.start")
        assert len(replays) >= 1 and len(activities) == 2
        assert {s.context.trace_id for s in [start, *replays, *activities]} == {trace_id}
        assert sorted(s.attributes["continuum.attempt"] for s in activities) == [1, 1]
        assert {s.attributes["continuum.workflow"] for s in [*replays, *activities]} == {"ops.quick"}
    assert engine.journal.get_run(first.id).trace_context != engine.journal.get_run(second.id).trace_context


def test_engine_log_records_carry_the_run_id_and_workflow(engine: Continuum, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="continuum_celery")
    with running_worker(engine):
        run = failing.start({"reason": "card declined"})
        with pytest.raises(WorkflowFailed):
            run.result(timeout=30)
    [record] = [r for r in caplog.records if r.name == "continuum_celery.executor"]
    assert (record.run_id, record.workflow) == (run.id, "ops.failing")  # type: ignore[attr-defined]
    assert record.getMessage().startswith(f"[ops.failing {run.id}] activity tests.support.flows_ops.refuse attempt 1")
