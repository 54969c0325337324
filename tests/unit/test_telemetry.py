"""Telemetry events: subscription, filtering, isolation, validation and run-context logs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator

import pytest

from continuum_celery import telemetry
from continuum_celery.errors import InvalidArgument
from continuum_celery.telemetry import TelemetryEvent

Listen = Callable[..., list[TelemetryEvent]]


@pytest.fixture
def listen() -> Iterator[Listen]:
    """Subscribe a recording handler; every subscription is removed after the test."""
    unsubscribes: list[Callable[[], None]] = []

    def _listen(events: Iterable[str] | None = None) -> list[TelemetryEvent]:
        received: list[TelemetryEvent] = []
        unsubscribes.append(telemetry.subscribe(received.append, events))
        return received

    yield _listen
    for unsubscribe in unsubscribes:
        unsubscribe()


def test_subscriber_receives_event_until_unsubscribed() -> None:
    received: list[TelemetryEvent] = []
    unsubscribe = telemetry.subscribe(received.append)
    try:
        telemetry.emit("activity_completed", run_id="r1", workflow="wf", activity="a", attempt=2)
    finally:
        unsubscribe()
    telemetry.emit("activity_completed", run_id="r1", workflow="wf", activity="a", attempt=3)
    unsubscribe()  # a second call is harmless

    [event] = received
    assert (event.name, event.run_id, event.workflow) == ("activity_completed", "r1", "wf")
    assert dict(event.fields) == {"activity": "a", "attempt": 2}
    assert event.at > 0


def test_event_fields_are_read_only(listen: Listen) -> None:
    received = listen()
    telemetry.emit("lease_lost", run_id="r1", token=7)
    with pytest.raises(TypeError):
        received[0].fields["token"] = 8  # type: ignore[index]


def test_filter_by_event_names(listen: Listen) -> None:
    finished = listen(["run_completed", "run_failed"])
    failed_only = listen("run_failed")
    everything = listen()

    telemetry.emit("run_started", run_id="r1")
    telemetry.emit("run_completed", run_id="r1")
    telemetry.emit("run_failed", run_id="r2")

    assert [e.name for e in finished] == ["run_completed", "run_failed"]
    assert [e.name for e in failed_only] == ["run_failed"]
    assert [e.name for e in everything] == ["run_started", "run_completed", "run_failed"]


def test_raising_handler_is_logged_and_isolated(listen: Listen, caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: TelemetryEvent) -> None:
        raise RuntimeError("handler bug")

    unsubscribe = telemetry.subscribe(broken)
    try:
        after = listen()
        telemetry.emit("timer_fired", run_id="r1", lateness=0.2)
    finally:
        unsubscribe()

    assert [e.name for e in after] == ["timer_fired"]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.name == "continuum_celery.telemetry"
    assert record.exc_info is not None
    assert "handler bug" in str(record.exc_info[1])


def test_unknown_event_names_are_refused(listen: Listen) -> None:
    with pytest.raises(InvalidArgument, match="valid names are: .*run_started"):
        telemetry.emit("run_exploded", run_id="r1")
    with pytest.raises(InvalidArgument, match="'nope'"):
        telemetry.subscribe(lambda event: None, ["run_started", "nope"])
    with pytest.raises(InvalidArgument):
        telemetry.connect("nope")

    # The refused subscription left nothing behind.
    received = listen()
    telemetry.emit("run_started", run_id="r1")
    assert len(received) == 1


def test_connect_decorator_with_events_and_bare() -> None:
    completed: list[str] = []
    everything: list[str] = []

    @telemetry.connect("run_completed")
    def on_completed(event: TelemetryEvent) -> None:
        completed.append(event.name)

    @telemetry.connect
    def on_anything(event: TelemetryEvent) -> None:
        everything.append(event.name)

    try:
        telemetry.emit("run_started", run_id="r1")
        telemetry.emit("run_completed", run_id="r1")
    finally:
        telemetry.disconnect(on_completed)
        telemetry.disconnect(on_anything)
    telemetry.emit("run_completed", run_id="r2")

    assert completed == ["run_completed"]
    assert everything == ["run_started", "run_completed"]


def test_emit_without_listeners_builds_no_event(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object) -> TelemetryEvent:
        raise AssertionError("an event object was built with nobody listening")

    monkeypatch.setattr(telemetry, "TelemetryEvent", forbidden)
    telemetry.emit("replay_step", run_id="r1", workflow="wf", duration=0.01, events=12)


def test_run_logger_records_carry_run_context(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="continuum_celery.tests")
    log = telemetry.run_logger("continuum_celery.tests", "r1", "orders.flow")

    log.info("charged %s cents", 250, extra={"attempt": 2})
    telemetry.run_logger("continuum_celery.tests", None, None).info("no run here")

    first, second = caplog.records
    assert first.getMessage() == "[orders.flow r1] charged 250 cents"
    assert (first.run_id, first.workflow, first.attempt) == ("r1", "orders.flow", 2)  # type: ignore[attr-defined]
    assert second.getMessage() == "no run here"
    assert (second.run_id, second.workflow) == (None, None)  # type: ignore[attr-defined]


def test_emit_logs_at_debug_with_run_context(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="continuum_celery.telemetry")
    telemetry.emit("sweep", duration=0.5, due_backlog=3, dispatched=2)
    telemetry.emit("nondeterminism", run_id="r9", workflow="wf", seq=4)

    sweep, nondet = caplog.records
    assert sweep.levelno == logging.DEBUG
    assert sweep.getMessage() == "sweep duration=0.5 due_backlog=3 dispatched=2"
    assert nondet.getMessage() == "[wf r9] nondeterminism seq=4"
    assert (nondet.run_id, nondet.workflow, nondet.event) == ("r9", "wf", "nondeterminism")  # type: ignore[attr-defined]


def test_concurrent_subscribe_and_emit_leave_no_handler_behind() -> None:
    errors: list[BaseException] = []
    churned: list[TelemetryEvent] = []
    stop = threading.Event()

    def churn() -> None:
        try:
            for _ in range(300):
                telemetry.subscribe(churned.append, ["signal_received"])()
        except BaseException as exc:  # surfaced to the main thread below
            errors.append(exc)

    def emitter() -> None:
        while not stop.is_set():
            telemetry.emit("signal_received", run_id="r1", signal="go")

    workers = [threading.Thread(target=churn) for _ in range(4)]
    background = threading.Thread(target=emitter)
    background.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    stop.set()
    background.join(timeout=30)

    assert errors == []
    before = len(churned)
    telemetry.emit("signal_received", run_id="r1", signal="go")
    assert len(churned) == before  # every churned subscription is gone
