"""Version-routed queues: where a replay goes, what a worker consumes, and the heartbeat."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from continuum_celery import telemetry
from continuum_celery.dispatch import REPLAY_TASK, Dispatcher, run_member
from continuum_celery.errors import ConfigurationError
from continuum_celery.journal.records import Dispatch, NewRun
from continuum_celery.journal.schema import migrate
from continuum_celery.journal.sql import SQLJournal
from continuum_celery.routing import (
    VersionHeartbeat,
    base_queue,
    consume_engine_queues,
    log_worker_plan,
    report_unknown_versions,
    version_queue,
)
from continuum_celery.wakeups import LocalWakeups
from tests.support.stack import wait_until

HASH = "0123456789abcdef"


class Sent:
    """Records what ``app.send_task`` was asked to send."""

    def __init__(self, app: Celery) -> None:
        self.calls: list[tuple[str, list[Any], str | None]] = []
        app.send_task = self  # type: ignore[method-assign]

    def __call__(self, name: str, args: list[Any], **options: Any) -> None:
        self.calls.append((name, args, options.get("queue")))


def test_replays_go_to_their_version_queue() -> None:
    app = Celery("routing-test", broker="memory://")
    sent = Sent(app)
    dispatcher = Dispatcher(app, None, None)
    dispatcher.send([Dispatch("replay", "r1", version_hash=HASH), Dispatch("replay", "r2")])
    assert sent.calls == [(REPLAY_TASK, ["r1"], f"celery.v.{HASH}"), (REPLAY_TASK, ["r2"], None)]

    named = Dispatcher(app, "flows", None)
    assert named.replay_queue(HASH) == f"flows.v.{HASH}" == version_queue(base_queue(app, "flows"), HASH)
    assert Dispatcher(app, "flows", None, version_routing=False).replay_queue(HASH) == "flows"


def test_a_wakeup_keeps_the_runs_version() -> None:
    app = Celery("routing-test", broker="memory://")
    sent = Sent(app)
    dispatcher = Dispatcher(app, None, LocalWakeups())
    dispatcher.dispatch_member(run_member("r1", HASH))
    dispatcher.dispatch_member(run_member("r2"))
    assert sent.calls == [(REPLAY_TASK, ["r1"], f"celery.v.{HASH}"), (REPLAY_TASK, ["r2"], None)]


def test_a_worker_consumes_its_version_queues_only_if_it_takes_replays() -> None:
    app = Celery("routing-test", broker="memory://")
    added = consume_engine_queues(app, "celery", [HASH, HASH, "fedcba9876543210"])
    assert added == [f"celery.v.{HASH}", "celery.v.fedcba9876543210"]  # "celery" is consumed already
    assert set(added) <= set(app.amqp.queues.consume_from)

    activity_only = Celery("routing-test-2", broker="memory://")
    activity_only.amqp.queues.select(["payments"])  # like `celery worker -Q payments`
    assert consume_engine_queues(activity_only, "celery", [HASH]) == []
    assert list(activity_only.amqp.queues.consume_from) == ["payments"]


def test_without_q_a_worker_consumes_a_custom_continuum_queue_too() -> None:
    app = Celery("routing-test-3", broker="memory://")
    assert consume_engine_queues(app, "flows", [HASH]) == ["flows", f"flows.v.{HASH}"]
    assert set(app.amqp.queues.consume_from) == {"celery", "flows", f"flows.v.{HASH}"}
    queue = app.amqp.queues["flows"]
    assert (queue.exchange.name, queue.routing_key) == ("flows", "flows")  # as a sender declares it

    chosen = Celery("routing-test-4", broker="memory://")
    chosen.amqp.queues.select(["flows", "payments"])  # -Q naming the engine's queue
    assert consume_engine_queues(chosen, "flows", [HASH]) == [f"flows.v.{HASH}"]


def test_the_startup_log_names_the_workflows_and_what_q_leaves_out(caplog: pytest.LogCaptureFixture) -> None:
    app = Celery("routing-test-5", broker="memory://")
    app.amqp.queues.select(["payments"])
    with caplog.at_level(logging.INFO, logger="continuum_celery.routing"):
        log_worker_plan(app, "flows", [("shop.order", 2, HASH)])
    text = caplog.text
    assert f"workflows registered: shop.order v2 ({HASH})" in text
    assert "consumes only payments (-Q): it will not consume 'flows'" in text and "flows.v.*" in text

    caplog.clear()
    plain = Celery("routing-test-6", broker="memory://")
    consume_engine_queues(plain, "flows", [HASH])
    with caplog.at_level(logging.INFO, logger="continuum_celery.routing"):
        log_worker_plan(plain, "flows", [])
    assert "no workflows registered" in caplog.text
    assert f"consuming 'flows' (replays, starts, sweeps) and version queues ['flows.v.{HASH}']" in caplog.text


def test_a_missing_version_is_logged_once_per_process_and_counted_every_sweep(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'journal.sqlite3'}"
    migrate(url)
    journal = SQLJournal(url)
    journal.create_run(NewRun("stranded", "shop.gone", "h-gone", 1, {}))
    journal.upsert_versions("host-a", [("shop.other", "h-other", 1, "m")])  # a live worker, without h-gone
    events: list[Any] = []
    unsubscribe = telemetry.subscribe(events.append, ["unknown_version"])
    try:
        with caplog.at_level(logging.WARNING, logger="continuum_celery.routing"):
            for _ in range(3):
                assert report_unknown_versions(journal, live_within=60, batch=10) == [("shop.gone", "h-gone", 1)]
            assert caplog.text.count("pinned to version h-gone") == 1
            assert [e.fields["version_hash"] for e in events] == ["h-gone"] * 3

            journal.upsert_versions("host-b", [("shop.gone", "h-gone", 1, "m")])  # served again: unparked
            assert report_unknown_versions(journal, live_within=60, batch=10) == []
            journal.retract_versions("host-b")  # gone again: worth a new warning
            report_unknown_versions(journal, live_within=60, batch=10)
            assert caplog.text.count("pinned to version h-gone") == 2
    finally:
        unsubscribe()
        journal.close()


def test_the_heartbeat_beats_until_stopped_and_survives_failures() -> None:
    beats: list[int] = []
    done = threading.Event()

    def beat() -> None:
        beats.append(1)
        if len(beats) == 2:
            raise RuntimeError("database down for a moment")
        if len(beats) >= 4:
            done.set()

    heartbeat = VersionHeartbeat(beat, 0.01)
    heartbeat.start()
    wait_until(done.is_set, 10, "four heartbeats, one of them failing")
    heartbeat.stop()
    assert not heartbeat.is_alive()
    assert len(beats) >= 4

    with pytest.raises(ConfigurationError, match="positive"):
        VersionHeartbeat(beat, 0)
