"""In-process wake-ups and notifications: LocalWakeups, WakeupPump and LocalNotifier.

No Redis here. Waits are on conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

import pytest
import redis

from continuum_celery.errors import InvalidArgument
from continuum_celery.notify import LocalNotifier
from continuum_celery.wakeup_pump import WakeupPump
from continuum_celery.wakeups import LocalWakeups, Wakeups

DEADLINE = 10.0


def wait_until(condition: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` elapses; return its last value."""
    ticker = threading.Event()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        ticker.wait(0.005)
    return condition()


class FakeClock:
    """A settable epoch clock."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FlakyWakeups:
    """Wraps a store and raises ``redis.ConnectionError`` from its first ``failures`` calls."""

    def __init__(self, inner: Wakeups, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def _maybe_fail(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise redis.ConnectionError("Redis is down")

    def schedule(self, member: str, due: float) -> None:
        self.inner.schedule(member, due)

    def schedule_many(self, items: Iterable[tuple[str, float]]) -> None:
        self.inner.schedule_many(items)

    def pop_due(self, now: float, limit: int = 100) -> list[str]:
        self._maybe_fail()
        return self.inner.pop_due(now, limit)

    def remove(self, member: str) -> None:
        self.inner.remove(member)

    def next_due(self) -> float | None:
        self._maybe_fail()
        return self.inner.next_due()

    def size(self) -> int:
        return self.inner.size()

    def wait(self, timeout: float) -> None:
        self.inner.wait(timeout)


# --- LocalWakeups ---------------------------------------------------------------------


def test_pop_due_returns_only_due_members_earliest_first() -> None:
    wakeups = LocalWakeups()
    wakeups.schedule_many([("c", 30.0), ("a", 10.0), ("late", 99.0), ("b", 20.0)])

    assert wakeups.pop_due(30.0) == ["a", "b", "c"]
    assert wakeups.pop_due(30.0) == []
    assert wakeups.size() == 1
    assert wakeups.next_due() == 99.0


def test_schedule_keeps_the_earlier_due_time() -> None:
    wakeups = LocalWakeups()
    wakeups.schedule("run:1", 50.0)
    wakeups.schedule("run:1", 80.0)
    assert wakeups.next_due() == 50.0

    wakeups.schedule("run:1", 20.0)
    assert wakeups.next_due() == 20.0
    assert wakeups.size() == 1
    assert wakeups.pop_due(20.0) == ["run:1"]
    assert wakeups.pop_due(1_000.0) == []


def test_schedule_many_keeps_the_earliest_of_duplicates() -> None:
    wakeups = LocalWakeups()
    wakeups.schedule_many([("x", 5.0), ("x", 3.0), ("x", 9.0)])
    assert wakeups.size() == 1
    assert wakeups.next_due() == 3.0


def test_pop_due_respects_limit() -> None:
    wakeups = LocalWakeups()
    wakeups.schedule_many((f"m{i}", float(i)) for i in range(10))
    assert wakeups.pop_due(100.0, limit=3) == ["m0", "m1", "m2"]
    assert wakeups.size() == 7
    with pytest.raises(InvalidArgument):
        wakeups.pop_due(100.0, limit=0)


def test_remove_and_reschedule() -> None:
    wakeups = LocalWakeups()
    wakeups.schedule("t", 5.0)
    wakeups.remove("t")
    wakeups.remove("absent")
    assert wakeups.size() == 0
    assert wakeups.next_due() is None
    assert wakeups.pop_due(10.0) == []

    wakeups.schedule("t", 7.0)
    assert wakeups.pop_due(10.0) == ["t"]


def test_many_moves_and_removals_stay_consistent() -> None:
    wakeups = LocalWakeups()
    for round_ in range(50):
        for i in range(20):
            wakeups.schedule(f"m{i}", 1_000.0 - round_ - i)
    for i in range(0, 20, 2):
        wakeups.remove(f"m{i}")
    popped = wakeups.pop_due(10_000.0, limit=100)
    assert sorted(popped) == sorted(f"m{i}" for i in range(1, 20, 2))
    assert wakeups.size() == 0


def test_concurrent_pops_get_each_member_once() -> None:
    wakeups = LocalWakeups()
    members = [f"m{i}" for i in range(1_000)]
    wakeups.schedule_many((m, 1.0) for m in members)
    results: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def drain(out: list[str]) -> None:
        barrier.wait()
        while batch := wakeups.pop_due(2.0, limit=7):
            out.extend(batch)

    threads = [threading.Thread(target=drain, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)

    combined = results[0] + results[1]
    assert len(combined) == len(members)
    assert set(combined) == set(members)


# --- WakeupPump.run_once ----------------------------------------------------------------


def test_run_once_dispatches_only_due_members() -> None:
    clock = FakeClock(100.0)
    wakeups = LocalWakeups()
    wakeups.schedule_many([("a", 99.0), ("b", 100.0), ("c", 101.0)])
    seen: list[str] = []
    pump = WakeupPump(wakeups, seen.append, clock=clock)

    assert pump.run_once() == 2
    assert seen == ["a", "b"]
    assert pump.run_once() == 0

    clock.now = 101.0
    assert pump.run_once() == 1
    assert seen == ["a", "b", "c"]


def test_run_once_reschedules_a_member_whose_dispatch_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(100.0)
    wakeups = LocalWakeups()
    wakeups.schedule_many([("bad", 1.0), ("good", 2.0)])
    seen: list[str] = []

    def dispatch(member: str) -> None:
        if member == "bad":
            raise RuntimeError("broker refused")
        seen.append(member)

    pump = WakeupPump(wakeups, dispatch, clock=clock, retry_delay=1.0)
    with caplog.at_level(logging.ERROR, logger="continuum_celery.wakeup_pump"):
        assert pump.run_once() == 1

    assert seen == ["good"]
    assert wakeups.size() == 1
    assert wakeups.next_due() == 101.0
    assert any("bad" in record.getMessage() for record in caplog.records)


def test_run_once_raises_store_errors() -> None:
    pump = WakeupPump(FlakyWakeups(LocalWakeups(), failures=1), lambda m: None)
    with pytest.raises(redis.ConnectionError):
        pump.run_once()
    assert pump.run_once() == 0


def test_pump_refuses_bad_settings() -> None:
    with pytest.raises(InvalidArgument):
        WakeupPump(LocalWakeups(), lambda m: None, poll_interval=0)
    with pytest.raises(InvalidArgument):
        WakeupPump(LocalWakeups(), lambda m: None, batch=0)


# --- WakeupPump thread ------------------------------------------------------------------


def test_pump_thread_dispatches_due_members_in_order() -> None:
    wakeups = LocalWakeups()
    seen: list[str] = []
    lock = threading.Lock()

    def dispatch(member: str) -> None:
        with lock:
            seen.append(member)

    now = time.time()
    wakeups.schedule_many([(f"m{i}", now + 0.01 * i) for i in reversed(range(20))])
    pump = WakeupPump(wakeups, dispatch, poll_interval=0.05, batch=3)
    pump.start()
    try:
        assert wait_until(lambda: len(seen) == 20)
    finally:
        pump.stop()
    assert seen == [f"m{i}" for i in range(20)]
    assert not pump.running


def test_pump_thread_survives_a_dispatch_exception() -> None:
    wakeups = LocalWakeups()
    attempts: list[str] = []
    done = threading.Event()

    def dispatch(member: str) -> None:
        attempts.append(member)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")
        done.set()

    wakeups.schedule("run:x", time.time())
    pump = WakeupPump(wakeups, dispatch, poll_interval=0.02, retry_delay=0.01)
    pump.start()
    try:
        assert done.wait(DEADLINE)
    finally:
        pump.stop()
    assert attempts == ["run:x", "run:x"]
    assert wakeups.size() == 0


def test_pump_thread_survives_an_outage_and_logs_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyWakeups(LocalWakeups(), failures=4)
    done = threading.Event()
    store.inner.schedule("run:y", time.time())
    pump = WakeupPump(store, lambda member: done.set(), poll_interval=0.01)
    with caplog.at_level(logging.INFO, logger="continuum_celery.wakeup_pump"):
        pump.start()
        try:
            assert done.wait(DEADLINE)
        finally:
            pump.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    recoveries = [r for r in caplog.records if "available again" in r.getMessage()]
    assert len(warnings) == 1
    assert len(recoveries) == 1


def test_pump_start_is_idempotent_and_restartable() -> None:
    wakeups = LocalWakeups()
    seen: list[str] = []
    pump = WakeupPump(wakeups, seen.append, poll_interval=0.02)
    pump.start()
    pump.start()
    pump.stop()
    assert not pump.running

    wakeups.schedule("after-restart", time.time())
    pump.start()
    try:
        pump.wake()
        assert wait_until(lambda: seen == ["after-restart"])
    finally:
        pump.stop()


# --- LocalNotifier ----------------------------------------------------------------------


def test_publish_wakes_a_waiter() -> None:
    notifier = LocalNotifier(fallback_interval=60.0)
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
    notifier.publish_finished("other-run", "completed")
    finished.set()
    notifier.publish_finished("r1", "completed")
    waiter.join(DEADLINE)

    assert outcome == [True]
    # Initial check, then one after the notification; the 60 s fallback never ran.
    assert calls == [False, True]


def test_wait_returns_at_once_when_already_finished() -> None:
    notifier = LocalNotifier(fallback_interval=60.0)
    notifier.publish_finished("r2", "completed")  # nobody listening: lost, like pub/sub
    calls: list[int] = []

    def check() -> bool:
        calls.append(1)
        return True

    assert notifier.wait_finished("r2", 30.0, check) is True
    assert len(calls) == 1


def test_wait_falls_back_to_check_when_the_notification_is_lost() -> None:
    notifier = LocalNotifier(fallback_interval=0.01)
    calls: list[int] = []

    def check() -> bool:
        calls.append(1)
        return len(calls) >= 3

    assert notifier.wait_finished("r3", 30.0, check) is True
    assert len(calls) == 3


def test_wait_times_out_without_tight_polling() -> None:
    notifier = LocalNotifier(fallback_interval=0.05)
    calls: list[int] = []

    def check() -> bool:
        calls.append(1)
        return False

    assert notifier.wait_finished("r4", 0.3, check) is False
    # One initial check and about one per fallback interval; a tight loop would do thousands.
    assert 2 <= len(calls) <= 0.3 / 0.05 + 3


def test_zero_timeout_asks_check_once() -> None:
    notifier = LocalNotifier()
    calls: list[int] = []

    def check() -> bool:
        calls.append(1)
        return False

    assert notifier.wait_finished("r5", 0, check) is False
    assert len(calls) == 1


def test_claim_dispatch_dedupes_until_expiry() -> None:
    clock = FakeClock(0.0)
    notifier = LocalNotifier(clock=clock)
    assert notifier.claim_dispatch("replay:r1", ttl=5.0) is True
    assert notifier.claim_dispatch("replay:r1", ttl=5.0) is False
    assert notifier.claim_dispatch("replay:r2", ttl=5.0) is True

    clock.now = 5.0
    assert notifier.claim_dispatch("replay:r1", ttl=5.0) is True
    with pytest.raises(InvalidArgument):
        notifier.claim_dispatch("replay:r1", ttl=0)


def test_claim_dispatch_forgets_expired_claims() -> None:
    clock = FakeClock(0.0)
    notifier = LocalNotifier(clock=clock)
    for i in range(2_000):
        assert notifier.claim_dispatch(f"k{i}", ttl=1.0)
    clock.now = 2.0
    for i in range(2_000):
        assert notifier.claim_dispatch(f"n{i}", ttl=1.0)
    assert len(notifier._claims) < 4_000


def test_a_member_scheduled_while_the_pump_sleeps_wakes_it() -> None:
    """The pump sleeps until its next member is due; scheduling an earlier one cuts that sleep short."""
    wakeups, seen, woke = LocalWakeups(), [], threading.Event()

    def dispatch(member: str) -> None:
        seen.append(member)
        woke.set()

    pump = WakeupPump(wakeups, dispatch, poll_interval=60.0)
    pump.start()
    try:
        wakeups.schedule("run:late", time.time() + 3600)
        wakeups.schedule("run:soon", time.time())
        assert woke.wait(10.0), "the pump slept on past a member due now"
        assert seen == ["run:soon"]
    finally:
        pump.stop()
