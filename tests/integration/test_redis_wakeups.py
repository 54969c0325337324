"""RedisWakeups, WakeupPump and RedisNotifier against a real Redis server.

Every key lives under the test's ``redis_prefix`` on the test database; no
mocks. Waits are on conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from continuum_celery.notify import RedisNotifier
from continuum_celery.wakeup_pump import WakeupPump
from continuum_celery.wakeups import RedisWakeups

DEADLINE = 10.0
#: A port nothing listens on: every call fails with a real ConnectionError.
DEAD_REDIS = "redis://127.0.0.1:1/0"


def wait_until(condition: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` elapses; return its last value."""
    ticker = threading.Event()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        ticker.wait(0.005)
    return condition()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def wakeups(client: redis.Redis, redis_prefix: str) -> RedisWakeups:
    return RedisWakeups(client, redis_prefix + "wakeups")


@pytest.fixture
def dead_client() -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(DEAD_REDIS, socket_connect_timeout=1)
    yield conn
    conn.close()


class Recorder:
    """A dispatch callback that records members and the clock when each arrived."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, float]] = []

    def __call__(self, member: str) -> None:
        with self.lock:
            self.calls.append((member, time.time()))

    @property
    def members(self) -> list[str]:
        with self.lock:
            return [member for member, _ in self.calls]


# --- RedisWakeups -----------------------------------------------------------------------


def test_schedule_keeps_the_earlier_due_time(wakeups: RedisWakeups) -> None:
    wakeups.schedule("run:1", 50.0)
    wakeups.schedule("run:1", 80.0)
    assert wakeups.next_due() == 50.0

    wakeups.schedule("run:1", 20.0)
    assert wakeups.next_due() == 20.0
    assert wakeups.size() == 1

    wakeups.schedule_many([("run:1", 90.0), ("run:2", 40.0), ("run:2", 30.0)])
    assert wakeups.size() == 2
    assert wakeups.pop_due(25.0) == ["run:1"]
    assert wakeups.next_due() == 30.0


def test_pop_due_remove_and_size(wakeups: RedisWakeups) -> None:
    wakeups.schedule_many([("c", 3.0), ("a", 1.0), ("b", 2.0), ("z", 1e12)])
    wakeups.remove("b")
    wakeups.remove("absent")
    assert wakeups.pop_due(10.0, limit=1) == ["a"]
    assert wakeups.pop_due(10.0) == ["c"]
    assert wakeups.pop_due(10.0) == []
    assert wakeups.size() == 1
    wakeups.remove("z")
    assert wakeups.next_due() is None
    assert wakeups.size() == 0


def test_works_with_a_decoding_client(redis_url: str, redis_prefix: str) -> None:
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        wakeups = RedisWakeups(conn, redis_prefix + "decoded")
        wakeups.schedule("activity:é:2", 1.5)
        assert wakeups.next_due() == 1.5
        assert wakeups.pop_due(2.0) == ["activity:é:2"]
    finally:
        conn.close()


def test_large_pop_crosses_the_lua_chunk_size(wakeups: RedisWakeups) -> None:
    wakeups.schedule_many((f"m{i}", float(i)) for i in range(2_500))
    popped = wakeups.pop_due(1e9, limit=2_500)
    assert popped == [f"m{i}" for i in range(2_500)]
    assert wakeups.size() == 0


def test_two_concurrent_poppers_get_each_member_exactly_once(redis_url: str, redis_prefix: str) -> None:
    members = [f"run:{i}" for i in range(1_000)]
    clients = [redis.Redis.from_url(redis_url) for _ in range(2)]
    stores = [RedisWakeups(c, redis_prefix + "race") for c in clients]
    stores[0].schedule_many((m, 1.0) for m in members)
    results: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def drain(store: RedisWakeups, out: list[str]) -> None:
        barrier.wait()
        while batch := store.pop_due(2.0, limit=7):
            out.extend(batch)

    threads = [threading.Thread(target=drain, args=(store, out)) for store, out in zip(stores, results, strict=True)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
    finally:
        for c in clients:
            c.close()

    combined = results[0] + results[1]
    assert len(combined) == len(members)
    assert sorted(combined) == sorted(members)
    assert results[0] and results[1], "both poppers should have taken part"


# --- WakeupPump on Redis ----------------------------------------------------------------


def test_pump_dispatches_due_members_in_order_and_never_early(wakeups: RedisWakeups) -> None:
    recorder = Recorder()
    now = time.time()
    due = {f"run:{i}": now + 0.02 * i for i in range(15)}
    wakeups.schedule_many(reversed(due.items()))
    pump = WakeupPump(wakeups, recorder, poll_interval=0.05)
    pump.start()
    try:
        assert wait_until(lambda: len(recorder.members) == len(due))
    finally:
        pump.stop()

    assert recorder.members == sorted(due, key=due.__getitem__)
    assert all(at >= due[member] for member, at in recorder.calls)
    assert wakeups.size() == 0


def test_a_member_scheduled_elsewhere_wakes_a_sleeping_pump(
    client: redis.Redis, redis_url: str, redis_prefix: str
) -> None:
    """A short timer scheduled by another process is dispatched at once, not at the pump's next look."""
    slow_look = 60.0  # far longer than DEADLINE: only the news can wake the pump in time
    pumped = RedisWakeups(client, redis_prefix + "wakeups", longest_block=slow_look)
    recorder = Recorder()
    pump = WakeupPump(pumped, recorder, poll_interval=slow_look)
    pump.start()
    other_process = redis.Redis.from_url(redis_url)
    try:
        sleeping = lambda: any(c.get("cmd") == "blpop" for c in client.client_list(_type="normal"))  # noqa: E731
        assert wait_until(sleeping), "the pump sleeps in BLPOP"
        RedisWakeups(other_process, redis_prefix + "wakeups").schedule("run:soon", time.time())
        assert wait_until(lambda: recorder.members == ["run:soon"])
    finally:
        pump.stop(timeout=0)  # its BLPOP ends on its own; the thread is a daemon
        other_process.close()


def test_pump_survives_losing_the_key(wakeups: RedisWakeups, client: redis.Redis) -> None:
    recorder = Recorder()
    pump = WakeupPump(wakeups, recorder, poll_interval=0.02)
    pump.start()
    try:
        wakeups.schedule("before", time.time())
        assert wait_until(lambda: recorder.members == ["before"])

        wakeups.schedule("lost", time.time() + 3600)
        client.delete(wakeups.key)
        wakeups.schedule("after", time.time())
        assert wait_until(lambda: recorder.members == ["before", "after"])
        assert pump.running
    finally:
        pump.stop()
    assert "lost" not in recorder.members


def test_pump_survives_a_dispatch_exception(wakeups: RedisWakeups) -> None:
    attempts: list[str] = []
    done = threading.Event()

    def dispatch(member: str) -> None:
        attempts.append(member)
        if len(attempts) == 1:
            raise RuntimeError("broker refused the message")
        done.set()

    pump = WakeupPump(wakeups, dispatch, poll_interval=0.02, retry_delay=0.05)
    wakeups.schedule("activity:a:1", time.time())
    pump.start()
    try:
        assert done.wait(DEADLINE)
    finally:
        pump.stop()
    assert attempts == ["activity:a:1", "activity:a:1"]
    assert wakeups.size() == 0


class CountingWakeups(RedisWakeups):
    """RedisWakeups that counts its pop attempts, failed or not."""

    attempts = 0

    def pop_due(self, now: float, limit: int = 100) -> list[str]:
        self.attempts += 1
        return super().pop_due(now, limit)


def test_pump_survives_an_unreachable_redis(dead_client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    store = CountingWakeups(dead_client, "unreachable")
    pump = WakeupPump(store, Recorder(), poll_interval=0.01)
    with caplog.at_level(logging.WARNING, logger="continuum_celery.wakeup_pump"):
        pump.start()
        try:
            assert wait_until(lambda: store.attempts >= 3)
            assert pump.running
        finally:
            pump.stop()
    assert not pump.running
    assert len(caplog.records) == 1, "an outage is logged once, not once per attempt"


def test_store_calls_raise_when_redis_is_down(dead_client: redis.Redis) -> None:
    wakeups = RedisWakeups(dead_client, "unreachable")
    with pytest.raises(redis.ConnectionError):
        wakeups.schedule("x", 1.0)
    with pytest.raises(redis.ConnectionError):
        wakeups.pop_due(1.0)


# --- RedisNotifier ----------------------------------------------------------------------


def test_publish_wakes_a_waiter(client: redis.Redis, redis_prefix: str) -> None:
    notifier = RedisNotifier(client, redis_prefix, fallback_interval=60.0)
    finished = threading.Event()
    subscribed = threading.Event()
    calls: list[bool] = []
    outcome: list[bool] = []

    def check() -> bool:
        subscribed.set()
        calls.append(finished.is_set())
        return finished.is_set()

    waiter = threading.Thread(target=lambda: outcome.append(notifier.wait_finished("r1", 30.0, check)))
    waiter.start()
    assert subscribed.wait(DEADLINE)
    notifier.publish_finished("another-run", "completed")
    finished.set()
    notifier.publish_finished("r1", "completed")
    waiter.join(DEADLINE)

    assert outcome == [True]
    # The initial check, then one after the notification; the 60 s fallback never ran.
    assert calls == [False, True]


def test_wait_sees_a_publish_that_came_before_subscribe(client: redis.Redis, redis_prefix: str) -> None:
    notifier = RedisNotifier(client, redis_prefix, fallback_interval=60.0)
    notifier.publish_finished("r2", "completed")  # nobody subscribed: the message is gone
    calls: list[int] = []

    def check() -> bool:
        calls.append(1)
        return True

    started = time.monotonic()
    assert notifier.wait_finished("r2", 30.0, check) is True
    assert calls == [1]
    assert time.monotonic() - started < 30.0


def test_wait_times_out_with_checks_at_the_fallback_pace(client: redis.Redis, redis_prefix: str) -> None:
    notifier = RedisNotifier(client, redis_prefix, fallback_interval=0.05)
    calls: list[int] = []

    def check() -> bool:
        calls.append(1)
        return False

    assert notifier.wait_finished("r3", 0.3, check) is False
    assert 2 <= len(calls) <= 0.3 / 0.05 + 3


def test_wait_degrades_to_polling_when_redis_is_down(dead_client: redis.Redis) -> None:
    notifier = RedisNotifier(dead_client, "p:", fallback_interval=0.01)
    calls: list[int] = []

    def check() -> bool:
        calls.append(1)
        return len(calls) >= 3

    assert notifier.wait_finished("r4", 30.0, check) is True
    assert len(calls) == 3
    assert notifier.wait_finished("r5", 0.05, lambda: False) is False


def test_claim_dispatch_dedupes(client: redis.Redis, redis_prefix: str) -> None:
    notifier = RedisNotifier(client, redis_prefix)
    assert notifier.claim_dispatch("replay:r1", ttl=30.0) is True
    assert notifier.claim_dispatch("replay:r1", ttl=30.0) is False
    assert notifier.claim_dispatch("replay:r2", ttl=30.0) is True
    assert 0 < client.pttl(notifier.dispatch_key("replay:r1")) <= 30_000


def test_claim_dispatch_frees_the_key_after_ttl(client: redis.Redis, redis_prefix: str) -> None:
    notifier = RedisNotifier(client, redis_prefix)
    assert notifier.claim_dispatch("replay:r3", ttl=0.05) is True
    assert wait_until(lambda: not client.exists(notifier.dispatch_key("replay:r3")))
    assert notifier.claim_dispatch("replay:r3", ttl=0.05) is True


def test_concurrent_claims_elect_one_sender(redis_url: str, redis_prefix: str) -> None:
    conn = redis.Redis.from_url(redis_url, max_connections=16)
    notifier = RedisNotifier(conn, redis_prefix)
    barrier = threading.Barrier(8)
    wins: list[bool] = []
    lock = threading.Lock()

    def claim() -> None:
        barrier.wait()
        won = notifier.claim_dispatch("replay:hot", ttl=30.0)
        with lock:
            wins.append(won)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
    finally:
        conn.close()
    assert sorted(wins) == [False] * 7 + [True]
