"""Bad input at the call site: a clear error naming the problem, and nothing journaled or written.

Inside a body, a refused call issues no command (the decision is empty). Through
the client, a refused start, signal or lookup leaves every journal table as it was.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from continuum_celery import InvalidArgument, PayloadError, UnknownWorkflow, activity, installer, runtime, workflow
from continuum_celery.context import RunInfo, context_factory
from continuum_celery.dispatch import START_TASK
from continuum_celery.embedded import embedded_app
from continuum_celery.errors import RunNotFound
from continuum_celery.journal.schema import metadata, migrate
from continuum_celery.journal.sql import SQLJournal
from continuum_celery.replay import Complete, Decision, Fail, replay_history
from continuum_celery.workflows import get_workflow

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
INFO = RunInfo("run-inputs", "tests.inputs.flow", "hash")


@activity(name="tests.inputs.echo")
def echo(value: Any = None, **extra: Any) -> Any:
    return value


@workflow(workflow="tests.inputs.flow")
def inputs_flow(ctx: Any, order: Any) -> Any:
    return order


def plain_function(x: int) -> int:
    return x


def decide(body: Callable[[Any, Any], Any], max_payload_bytes: int = 1_000_000) -> Decision:
    """Run a body on an empty history."""
    return replay_history(body, None, [], context_factory(INFO, max_payload_bytes), NOW, run_id=INFO.run_id)


def refused(call: Callable[[Any], Any], max_payload_bytes: int = 1_000_000) -> Exception:
    """The error ``call(ctx)`` raises inside a body; the body issued no command."""
    caught: list[Exception] = []

    def body(ctx: Any, _: Any) -> str:
        try:
            call(ctx)
        except Exception as exc:
            caught.append(exc)
        return "refused"

    decision = decide(body, max_payload_bytes)
    assert decision == Decision([], Complete("refused"))
    assert len(caught) == 1, "the call was accepted"
    return caught[0]


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda ctx: ctx.run(echo, {"at": NOW}), PayloadError, "arguments of activity tests.inputs.echo[0]['at']"),
        (lambda ctx: ctx.start_activity(echo, [1, Decimal("2")]), PayloadError, "[0][1] is a decimal.Decimal"),
        (lambda ctx: ctx.run(echo, tag={1: "x"}), PayloadError, "has the key 1 of type int"),
        (lambda ctx: ctx.run(echo, float("nan")), PayloadError, "JSON cannot represent"),
        (lambda ctx: ctx.run(echo.options(idempotency_key=""), 1), InvalidArgument, "idempotency_key"),
        (lambda ctx: ctx.run(plain_function, 1), InvalidArgument, "decorate it with @activity"),
        (lambda ctx: ctx.wait_signal(""), InvalidArgument, "non-empty str"),
        (lambda ctx: ctx.wait_signal(7), InvalidArgument, "non-empty str"),
        (lambda ctx: ctx.sleep(-1), InvalidArgument, "must not be negative"),
        (lambda ctx: ctx.sleep_until(datetime(2026, 1, 2)), InvalidArgument, "aware datetime"),
        (lambda ctx: ctx.start_child(plain_function, 1), InvalidArgument, "needs a @workflow"),
        (lambda ctx: ctx.start_child(inputs_flow, {"s": {1, 2}}), PayloadError, "input of child workflow"),
        (lambda ctx: ctx.start_child(inputs_flow, 1, run_id="bad id"), InvalidArgument, "malformed"),
        (lambda ctx: ctx.continue_as_new(object()), PayloadError, "continue_as_new input of tests.inputs.flow"),
        (lambda ctx: ctx.patched(""), InvalidArgument, "patch id"),
    ],
)
def test_a_refused_call_in_a_body_journals_nothing(call: Callable[[Any], Any], error: type, words: str) -> None:
    exc = refused(call)
    assert isinstance(exc, error)
    assert words in str(exc)


def test_an_oversized_argument_is_refused_with_its_size() -> None:
    exc = refused(lambda ctx: ctx.run(echo, "x" * 500), max_payload_bytes=100)
    assert isinstance(exc, PayloadError)
    assert exc.fields["size"] > 100 and exc.fields["limit"] == 100
    assert "over the 100-byte limit" in str(exc) and "store large data elsewhere" in str(exc)


def test_a_non_json_workflow_result_fails_the_run_with_a_payload_error() -> None:
    decision = decide(lambda ctx, _: {"when": NOW})
    assert decision.commands == [] and isinstance(decision.outcome, Fail)
    assert decision.outcome.error["type"] == "PayloadError"
    assert "result of workflow tests.inputs.flow['when'] is a datetime.datetime" in decision.outcome.error["message"]


# ---- through the client: nothing is written ------------------------------------------------------


def table_rows(journal: SQLJournal) -> dict[str, list[tuple[Any, ...]]]:
    with journal.engine.connect() as conn:
        return {t.name: [tuple(r) for r in conn.execute(sa.select(t))] for t in metadata.sorted_tables}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[installer.Continuum]:
    """An engine on a fresh SQLite journal and an in-memory broker; the installed engines are restored after."""
    url = f"sqlite:///{tmp_path / 'journal.sqlite3'}"
    migrate(url)
    journal = SQLJournal(url)
    saved = (runtime._current, dict(runtime._engines))
    name = f"inputs-{uuid.uuid4().hex[:6]}"
    try:
        yield installer.Continuum(embedded_app(name), journal=journal, name=name, max_payload_bytes=2_000)
    finally:
        runtime._current, runtime._engines = saved[0], saved[1]
        journal.close()


def test_a_refused_start_writes_nothing(engine: installer.Continuum) -> None:
    journal = engine.journal
    assert isinstance(journal, SQLJournal)
    empty = table_rows(journal)
    with pytest.raises(PayloadError, match=r"input of workflow tests.inputs.flow\['items'\]\[1\] is a builtins.set"):
        engine.client.start(inputs_flow, {"items": [1, {2}]})
    with pytest.raises(PayloadError, match="2000-byte limit"):
        engine.client.start(inputs_flow, "x" * 3_000)
    for bad in ("bad id", "", "-starts-with-dash", "x" * 129, 42):
        with pytest.raises(InvalidArgument, match="malformed"):
            engine.client.start(inputs_flow, {"ok": True}, run_id=bad)  # type: ignore[arg-type]
    with pytest.raises(UnknownWorkflow, match="tests.inputs.nope") as unknown:
        engine.app.tasks[START_TASK](workflow="tests.inputs.nope")
    assert "tests.inputs.flow" in unknown.value.fields["known"]
    with pytest.raises(InvalidArgument, match="2 positional values"):
        engine.app.tasks[START_TASK]({"a": 1}, {"b": 2}, workflow="tests.inputs.flow")
    with pytest.raises(UnknownWorkflow):
        get_workflow("tests.inputs.nope")
    with pytest.raises(InvalidArgument, match="malformed"):
        engine.client.get("not a run id")
    with pytest.raises(RunNotFound):
        engine.client.get("no-such-run")
    assert table_rows(journal) == empty


def test_a_refused_signal_writes_nothing(engine: installer.Continuum) -> None:
    journal = engine.journal
    assert isinstance(journal, SQLJournal)
    handle = engine.client.start(inputs_flow, {"order": 1}, run_id="order-1")
    assert handle.status() == "pending"
    before = table_rows(journal)
    with pytest.raises(PayloadError, match=r"payload of signal 'approve'\['by'\] is a datetime.datetime"):
        handle.signal("approve", {"by": NOW})
    with pytest.raises(PayloadError, match="2000-byte limit"):
        handle.signal("approve", "y" * 3_000)
    for bad in ("", "has space", None, "x" * 201, "-dash"):
        with pytest.raises(InvalidArgument, match="signal name"):
            handle.signal(bad, 1)  # type: ignore[arg-type]
    assert table_rows(journal) == before
    handle.signal("approve", {"ok": True})
    assert len(table_rows(journal)["continuum_signals"]) == 1
