"""Redis loses everything, first by FLUSHALL, then by a crash and restart, while runs sleep, wait on
signals and run activities. The Redis here is a private ``redis-server`` that the test owns (broker,
wake-ups and notifications all live on it), so a real restart harms nobody."""

from __future__ import annotations

import time

import pytest

from tests.chaos.audit import audit, wait_terminal
from tests.chaos.faults import Phases, open_runs, replace_dead_workers, signal_all, start_workers
from tests.chaos.servers import PrivateRedis
from tests.support.flows_chaos import outside_world_flow
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.chaos

PER_GROUP = 10
#: Seconds Redis stays down after the crash (the fault itself, not a wait for a result).
OUTAGE = 2.0


def _waiting(stack: Stack, kind: str, run_ids: list[str]) -> bool:
    found = stack.sql(
        "SELECT count(DISTINCT run_id) AS n FROM continuum_timers WHERE run_id = ANY(:ids) AND kind = :k",
        ids=run_ids,
        k=kind,
    )
    return found[0].n == len(run_ids)


def _start(run_ids: list[str], sleep: float) -> None:
    for run_id in run_ids:
        outside_world_flow.start({"id": run_id, "sleep": sleep}, run_id=run_id)


def _roles(stack: Stack, sizes: dict[str, int]) -> dict[str, int]:
    """What a snapshot of Redis held, by role: queued and unacknowledged messages, wake-ups."""
    broker = stack.broker_prefix
    return {
        "queued messages": sum(n for key, n in sizes.items() if key.startswith(broker + "celery")),
        "unacked messages": sizes.get(broker + "unacked", 0),
        "wake-ups": sizes.get(stack.key_prefix + "wakeups", 0),
    }


def test_runs_complete_after_redis_is_flushed_and_restarted(redis_chaos: Stack, private_redis: PrivateRedis) -> None:
    stack, phase = redis_chaos, Phases("redis")
    originals = start_workers(stack, "redis-a", "redis-b")
    workers = list(originals)
    stack.beat()
    waiters = [f"waiter-{i}" for i in range(PER_GROUP)]
    sleepers = [f"sleeper-{i}" for i in range(PER_GROUP)]
    busy = [f"busy-{i}" for i in range(PER_GROUP)]
    _start(waiters, 0.1)
    wait_until(lambda: _waiting(stack, "signal", waiters), 60, "the waiters to wait for their signal")
    _start(sleepers, 5.0)
    wait_until(lambda: _waiting(stack, "sleep", sleepers), 60, "the sleepers to sleep")
    _start(busy, 0.1)
    held = _roles(stack, private_redis.sizes())
    phase(f"runs wait, sleep and start; Redis holds {held}")

    # Fault 1: every key is gone at once: queues, unacked messages, bindings, wake-ups.
    private_redis.flushall()
    signal_all(stack, waiters, "after-flush")
    phase("FLUSHALL; waiters signalled")
    wait_until(lambda: _waiting(stack, "signal", sleepers + busy), 90, "sleepers and busy runs to wait for a signal")
    phase("sleepers woke up and busy runs reached their signal wait")

    # Fault 2: the server dies and comes back empty while the signalled runs run their activities.
    signal_all(stack, busy, "before-crash")
    private_redis.crash()
    time.sleep(OUTAGE)
    private_redis.start()
    signal_all(stack, sleepers, "after-restart")
    phase("Redis crashed and restarted; every run signalled")

    # Celery 5.7's consumer may die of the reconnect (AttributeError in kombu's channel close);
    # a supervisor would restart it, and so does this loop. Runs must not care.
    ids = waiters + sleepers + busy
    died = []

    def ended() -> bool:
        died.append(replace_dead_workers(stack, workers))
        return not open_runs(stack, ids)

    wait_until(ended, 120, "every run to end after the Redis faults", interval=0.5)
    wait_terminal(stack.sql, ids, timeout=5)
    phase(f"all ended; {sum(died)} worker(s) died of the reconnect and were replaced")

    result = audit(stack.sql, expected=ids)
    print(result.summary())
    result.assert_clean()
    assert result.states == {"completed": len(ids)}
    assert result.effects == 2 * len(ids)
    results = {run_id: stack.client().client.get(run_id).result(timeout=5)["signal"] for run_id in ids}
    assert {results[r] for r in sleepers} == {"after-restart"}
    # The faults happened: the flush took the sleepers' wake-ups with it, and the workers lost their
    # broker connection to a server that really restarted.
    assert held["wake-ups"] >= PER_GROUP
    assert private_redis.starts == 2
    assert all("Connection to broker lost" in w.output() for w in originals)
