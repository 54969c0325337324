"""Version-routed queues: where a replay goes, what a worker consumes, and the heartbeat."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from celery import Celery

from continuum_celery.dispatch import REPLAY_TASK, Dispatcher, run_member
from continuum_celery.errors import ConfigurationError
from continuum_celery.journal.base import Dispatch
from continuum_celery.routing import VersionHeartbeat, add_version_queues, base_queue, version_queue
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
    added = add_version_queues(app, "celery", [HASH, HASH, "fedcba9876543210"])
    assert added == [f"celery.v.{HASH}", "celery.v.fedcba9876543210"]
    assert set(added) <= set(app.amqp.queues.consume_from)

    activity_only = Celery("routing-test-2", broker="memory://")
    activity_only.amqp.queues.select(["payments"])  # like `celery worker -Q payments`
    assert add_version_queues(activity_only, "celery", [HASH]) == []
    assert list(activity_only.amqp.queues.consume_from) == ["payments"]


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
