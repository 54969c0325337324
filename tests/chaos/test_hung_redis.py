"""A hung wake-up Redis (SIGSTOPped: connections open, nothing answered) does not stall the engine.

Redis only makes timers fire on time; the journal holds them. While it hangs, each process
pays one short timeout, then skips Redis for a while, and the sweep fires the timers from
PostgreSQL. The broker lives elsewhere (the shared test Redis), as it would in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.audit import audit
from tests.chaos.conftest import private_stack
from tests.chaos.faults import open_runs
from tests.chaos.servers import PrivateRedis
from tests.support.flows_chaos import timers_flow
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.chaos

RUNS = 40
TIMERS = 3


@pytest.fixture
def wakeups_apart(fresh_pg_url: str, redis_url: str, private_redis: PrivateRedis, tmp_path: Path) -> Iterator[Stack]:
    """A chaos stack whose wake-ups and notifications live on the private Redis, its broker on the shared one."""
    with private_stack(fresh_pg_url, redis_url, tmp_path, wakeup_redis_url=private_redis.url) as stack:
        yield stack


def _sleeping(stack: Stack, run_ids: list[str]) -> bool:
    rows = stack.sql(
        "SELECT count(DISTINCT run_id) AS n FROM continuum_timers WHERE run_id = ANY(:ids) AND kind = 'sleep'",
        ids=run_ids,
    )
    return rows[0].n == len(run_ids)


def test_timers_fire_and_runs_end_while_the_wakeup_redis_hangs(
    wakeups_apart: Stack, private_redis: PrivateRedis
) -> None:
    stack = wakeups_apart
    worker = stack.worker(concurrency=2)
    stack.beat()
    ids = [f"hung-redis-{i}" for i in range(RUNS)]
    for run_id in ids:
        timers_flow.start({"timers": TIMERS, "sleep": 1.0}, run_id=run_id)
    wait_until(lambda: _sleeping(stack, ids), 60, "every run to sleep on its first timer")
    scheduled = private_redis.sizes().get(stack.key_prefix + "wakeups", 0)

    with private_redis.hung():
        # Every run still has its timers ahead of it; they must all fire with Redis unanswering.
        wait_until(lambda: not open_runs(stack, ids), 120, "every run to end while Redis hangs", interval=0.5)
        ended_while_hung = open_runs(stack, ids) == 0

    assert ended_while_hung
    assert scheduled > 0  # Redis really held the wake-ups before it hung
    assert "skipping it for" in worker.output()  # and the workers really met the hung server
    result = audit(stack.sql, expected=ids)
    result.assert_clean()
    assert result.states == {"completed": RUNS}
    fired = stack.sql(
        "SELECT count(*) AS n FROM continuum_events WHERE run_id = ANY(:ids) AND kind = 'timer_fired'", ids=ids
    )
    assert fired[0].n == RUNS * TIMERS
