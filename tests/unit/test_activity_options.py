"""Call options travel apart from an activity's arguments: ``act.options(...)`` / ``activity_options(task, ...)``.

Every keyword given to ``ctx.run`` reaches the activity; the options bound on the
activity become the ``activity_scheduled`` payload, in the format recorded
histories already hold.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from continuum_celery import BoundActivity, InvalidArgument, RetryPolicy, activity, activity_options
from continuum_celery.context import RunInfo, context_factory
from continuum_celery.events import Event, Kind
from continuum_celery.replay import Complete, Decision, replay_history

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
INFO = RunInfo("run-options", "tests.options.flow", "hash")
NAME = "tests.options.echo"
QUICK = RetryPolicy(max_attempts=2, initial_interval=0.5)

app = Celery("options-tests", set_as_current=False)


@activity(name=NAME, queue="default-q", timeout=30)
def echo(value: Any = None, **extra: Any) -> Any:
    return value


@app.task(name="tests.options.task", shared=False, queue="task-q")
def plain_task(value: Any = None) -> Any:
    return value


def scheduled(body: Callable[[Any], Any], history: list[Event] | None = None) -> Decision:
    """The decision of ``body(ctx)`` on ``history`` (default: a run that just started)."""
    events = history or [Event(1, Kind.RUN_STARTED, payload={"input": None})]
    return replay_history(lambda ctx, _: body(ctx), None, events, context_factory(INFO), NOW, run_id=INFO.run_id)


def payload_of(body: Callable[[Any], Any]) -> dict[str, Any]:
    [command] = scheduled(body).commands
    assert command.kind is Kind.ACTIVITY_SCHEDULED
    return command.payload


#: What ``ctx.run(echo, 1, tag="x", idempotency_key="k", retry=QUICK, queue="eu", timeout=5)`` journaled before
#: options moved apart: the payload format every recorded history holds.
RECORDED = {
    "args": [1],
    "kwargs": {"tag": "x"},
    "queue": "eu",
    "retry": QUICK.to_json(),
    "timeout": 5,
    "idempotency_key": "k",
}


def test_bound_options_journal_the_payload_recorded_histories_hold() -> None:
    bound = echo.options(idempotency_key="k", retry=QUICK, queue="eu", timeout=5)
    assert payload_of(lambda ctx: ctx.start_activity(bound, 1, tag="x")) == RECORDED


def test_an_old_history_replays_identically_on_the_new_call() -> None:
    history = [
        Event(1, Kind.RUN_STARTED, payload={"input": None}),
        Event(2, Kind.ACTIVITY_SCHEDULED, 1, NAME, RECORDED),
        Event(3, Kind.ACTIVITY_COMPLETED, 1, NAME, {"result": 1, "attempts": 1}),
    ]
    bound = echo.options(idempotency_key="k", retry=QUICK, queue="eu", timeout=5)
    assert scheduled(lambda ctx: ctx.run(bound, 1, tag="x"), history) == Decision([], Complete(1))


def test_keywords_named_like_options_are_the_activitys_own() -> None:
    payload = payload_of(lambda ctx: ctx.run(echo, 1, queue="q", retry=3, timeout=4, idempotency_key="k"))
    assert payload["kwargs"] == {"queue": "q", "retry": 3, "timeout": 4, "idempotency_key": "k"}
    assert (payload["queue"], payload["timeout"], payload["idempotency_key"]) == ("default-q", 30, None)


def test_options_left_out_keep_the_definitions_and_later_ones_win() -> None:
    first = echo.options(queue="eu", idempotency_key="k")
    both = first.options(queue="us", timeout=timedelta(seconds=7))
    payload = payload_of(lambda ctx: ctx.run(both, 1))
    assert (payload["queue"], payload["timeout"], payload["idempotency_key"]) == ("us", 7.0, "k")
    assert payload["retry"] == echo.retry.to_json()
    assert payload_of(lambda ctx: ctx.run(first, 1))["queue"] == "eu", "a bound copy leaves its source as it was"
    assert echo.queue == "default-q"


def test_a_celery_task_takes_options_through_activity_options() -> None:
    plain = payload_of(lambda ctx: ctx.run(plain_task, 1))
    assert (plain["queue"], plain["idempotency_key"]) == ("task-q", None)
    bound = activity_options(plain_task, queue="eu", idempotency_key="k", retry=QUICK)
    assert isinstance(bound, BoundActivity)
    payload = payload_of(lambda ctx: ctx.run(bound, 1))
    assert (payload["queue"], payload["idempotency_key"], payload["retry"]) == ("eu", "k", QUICK.to_json())


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: echo.options(timeout=0), "positive number of seconds"),
        (lambda: echo.options(timeout=-1), "positive number of seconds"),
        (lambda: echo.options(timeout=float("nan")), "positive number of seconds"),
        (lambda: echo.options(timeout=True), "positive number of seconds"),
        (lambda: echo.options(idempotency_key=""), f"idempotency_key for {NAME}"),
        (lambda: echo.options(idempotency_key="x" * 201), "at most 200 characters"),
        (lambda: activity_options(len, queue="q"), "decorate it with @activity"),
    ],
)
def test_bad_options_are_refused_where_they_are_bound(make: Callable[[], Any], words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        make()


def test_the_api_is_typed_from_the_definition_to_the_call() -> None:
    # typed_api.py asserts the inferred types, and marks each call mypy must refuse with an ignore
    # that --warn-unused-ignores reports should the refusal ever go away.
    source = Path(__file__).with_name("typed_api.py")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--warn-unused-ignores", str(source)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
