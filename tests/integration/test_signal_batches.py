"""One step consumes every signal already waiting in the inbox, not one signal per replay."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from continuum_celery import telemetry, workflow
from continuum_celery.context import RunInfo, context_factory
from continuum_celery.embedded import embedded_engine
from continuum_celery.errors import WorkflowFailed
from continuum_celery.events import Kind
from continuum_celery.installer import Continuum
from continuum_celery.replay import Complete, replay_history

SIGNALS = 300


@workflow(workflow="tests.signal_batches.collect")
def collect(ctx: Any, spec: dict[str, Any]) -> list[Any]:
    got = [ctx.wait_signal("go") for _ in range(spec["count"])]
    ctx.sleep(0)  # a command after the batch: the replay must line up with it too
    return got


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Continuum]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'journal.sqlite3'}"
    else:
        url = request.getfixturevalue("fresh_pg_url")
    engine = embedded_engine(url, name=f"signal-batches-{request.param}")
    try:
        yield engine
    finally:
        engine.cache.clear()
        engine.journal.close()


@pytest.fixture
def replays() -> Iterator[list[Any]]:
    steps: list[Any] = []
    unsubscribe = telemetry.subscribe(steps.append, ["replay_step"])
    yield steps
    unsubscribe()


def test_a_step_takes_every_signal_waiting_in_the_inbox(engine: Continuum, replays: list[Any]) -> None:
    handle = engine.client.start(collect, {"count": SIGNALS})
    assert engine.stepper.step(handle.id) == "suspended"
    for i in range(SIGNALS):
        handle.signal("go", i)
    replays.clear()
    while engine.stepper.step(handle.id) == "suspended":
        engine.cache.clear()  # the next step replays from the journal (and its snapshot): the batch must replay
    assert handle.result(timeout=5) == list(range(SIGNALS))
    # One claim resolves the pending wait and hands the rest of the inbox to the body; the sleep's
    # timer then needs a step of its own. Before, it took one replay per signal (300 here).
    assert len(replays) <= 3, len(replays)
    assert any(step.fields["snapshot_seq"] for step in replays)  # a step after the batch started from a snapshot
    history = handle.history()
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    received = [e.payload["payload"] for e in history if e.kind is Kind.SIGNAL_RECEIVED]
    assert received == list(range(SIGNALS))  # each once, in arrival order

    # The batch replays like any history: a fresh execution reproduces the result, issuing nothing new.
    info = RunInfo(handle.id, collect.name, collect.version_hash)
    decision = replay_history(
        collect.fn, {"count": SIGNALS}, history, context_factory(info), datetime.now(timezone.utc)
    )
    assert decision.commands == [] and decision.outcome == Complete(list(range(SIGNALS)))


def test_a_cancel_comes_before_the_signals_waiting_with_it(engine: Continuum) -> None:
    handle = engine.client.start(collect, {"count": 5})
    assert engine.stepper.step(handle.id) == "suspended"
    for i in range(5):
        handle.signal("go", i)
    handle.cancel()
    while engine.stepper.step(handle.id) == "suspended":
        pass
    with pytest.raises(WorkflowFailed):
        handle.result(timeout=5)
    assert handle.status() == "cancelled"
    # The body saw the cancel at its first wait: no signal was taken past it.
    kinds = [e.kind for e in handle.history()]
    assert Kind.SIGNAL_RECEIVED not in kinds[kinds.index(Kind.CANCEL_REQUESTED) :]
