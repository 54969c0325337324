"""Timer lateness: how late durable timers fire, with Redis up and with Redis flushed (sweep only).

Starts a real deployment (a fresh PostgreSQL database, a ``celery worker`` and a
``celery beat`` process, Redis as broker and wake-up store), then twice schedules
``--timers`` timers spread over ``--spread`` seconds, ``--lead`` seconds ahead:

* Redis up: the worker's wake-up pump fires each timer from the Redis sorted set.
* Redis flushed: once every timer is scheduled, FLUSHDB wipes the wake-ups and the
  broker's queues under the live worker; only the beat sweep, reading PostgreSQL,
  can fire them.

Lateness of a timer = its ``timer_fired`` event's ``created_at`` (the database time
of the replay step that fired it) minus the ``fire_at`` it was scheduled for.

Usage::

    .venv/bin/python bench/timer_lateness.py [--timers 200] [--redis-db 11]

The Redis database given is flushed: use one of your own (the shared test db 9 is refused).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from continuum_celery.config import DEFAULT_REDISPATCH_AFTER, DEFAULT_SWEEP_INTERVAL  # noqa: E402
from tests.conftest import REDIS_BASE, create_database, drop_database  # noqa: E402
from tests.support.stack import Stack, wait_until  # noqa: E402

SHARED_TEST_DB = 9
MODULES = ("tests.support.flows", "tests.support.flows_time")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=200, help="timers per mode (one run each)")
    parser.add_argument("--lead", type=float, default=20.0, help="seconds from start to the first fire time")
    parser.add_argument(
        "--spread",
        type=float,
        default=60.0,
        help="seconds over which fire times are spread (too short, and the workers' throughput, not the "
        "wake-up path, sets the lateness)",
    )
    parser.add_argument("--redis-db", type=int, default=11, help="Redis database to use and flush")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    parser.add_argument("--sweep-interval", type=float, default=DEFAULT_SWEEP_INTERVAL, help="beat sweep period")
    parser.add_argument("--redispatch-after", type=float, default=DEFAULT_REDISPATCH_AFTER)
    args = parser.parse_args(argv)
    if args.redis_db == SHARED_TEST_DB:
        parser.error(f"--redis-db {SHARED_TEST_DB} is shared by test runs and would be flushed; pick your own.")
    return args


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by nearest rank."""
    ranked = sorted(values)
    return ranked[max(0, min(len(ranked) - 1, round(p / 100 * len(ranked)) - 1))]


def schedule(stack: Stack, args: argparse.Namespace) -> list[str]:
    """Start one run per timer; each sleeps until its own fire time. Returns the run ids."""
    from tests.support.flows_time import sleep_until

    base = datetime.now(timezone.utc) + timedelta(seconds=args.lead)
    step = args.spread / max(1, args.timers - 1)
    return [sleep_until.start((base + timedelta(seconds=i * step)).isoformat()).id for i in range(args.timers)]


def lateness(stack: Stack, ids: list[str]) -> list[float]:
    rows = stack.sql(
        "SELECT EXTRACT(EPOCH FROM e.created_at - t.fire_at) AS late FROM continuum_events e "
        "JOIN continuum_timers t ON t.run_id = e.run_id AND t.command_id = e.command_id "
        "WHERE e.kind = 'timer_fired' AND e.run_id = ANY(:ids)",
        ids=ids,
    )
    return [float(r.late) for r in rows]


def count(stack: Stack, sql: str, ids: list[str]) -> int:
    return int(stack.sql(sql, ids=ids)[0].n)


def run_mode(stack: Stack, args: argparse.Namespace, flush: bool) -> tuple[list[float], int]:
    """Schedule the timers, maybe flush Redis once all are scheduled, wait for every run to finish.

    Returns the lateness of each timer fired after the flush (all of them with Redis up), and
    how many fired before the flush could happen (left out).
    """
    ids = schedule(stack, args)
    scheduled = "SELECT count(*) AS n FROM continuum_timers WHERE run_id = ANY(:ids)"
    wait_until(lambda: count(stack, scheduled, ids) == len(ids), args.lead + 120, "every timer to be scheduled")
    fired = "SELECT count(*) AS n FROM continuum_events WHERE kind = 'timer_fired' AND run_id = ANY(:ids)"
    if count(stack, fired, ids):
        print(f"  warning: timers fired before all {len(ids)} were scheduled; use a longer --lead", flush=True)
    early: set[str] = set()
    if flush:
        import redis

        client = redis.Redis.from_url(stack.redis_url)
        client.flushdb()
        client.close()
        early = {
            r.run_id
            for r in stack.sql(
                "SELECT run_id FROM continuum_events WHERE kind = 'timer_fired' AND run_id = ANY(:ids)", ids=ids
            )
        }
    done = "SELECT count(*) AS n FROM continuum_runs WHERE state = 'completed' AND id = ANY(:ids)"
    wait_until(lambda: count(stack, done, ids) == len(ids), args.lead + args.spread + 300, "every run to complete")
    return lateness(stack, [i for i in ids if i not in early]), len(early)


def report(label: str, values: list[float], left_out: int) -> str:
    note = f", {left_out} fired before the flush and left out" if left_out else ""
    return (
        f"{label:<28} n={len(values):<4} p50={statistics.median(values) * 1000:8.1f} ms  "
        f"p99={percentile(values, 99) * 1000:8.1f} ms  max={max(values) * 1000:8.1f} ms  "
        f"min={min(values) * 1000:7.1f} ms{note}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = f"continuum_lateness_{uuid.uuid4().hex[:8]}"
    url = create_database(name)
    tmp = Path(tempfile.mkdtemp(prefix="continuum-lateness-"))
    stack: Any = None
    try:
        from continuum_celery.journal.schema import migrate

        migrate(url)
        stack = Stack(database_url=url, redis_url=f"{REDIS_BASE}/{args.redis_db}", tmp=tmp, modules=MODULES)
        stack.client()
        env = {
            "CONTINUUM_SWEEP_INTERVAL": str(args.sweep_interval),
            "CONTINUUM_REDISPATCH_AFTER": str(args.redispatch_after),
        }
        stack.worker(concurrency=args.concurrency, **env)
        stack.beat(**env)
        print(
            f"{args.timers} timers per mode over {args.spread:g} s; worker concurrency {args.concurrency}; "
            f"sweep every {args.sweep_interval:g} s, redispatch after {args.redispatch_after:g} s",
            flush=True,
        )
        began = time.monotonic()
        up, _ = run_mode(stack, args, flush=False)
        print(report("Redis up (wake-up pump)", up, 0), flush=True)
        flushed, left_out = run_mode(stack, args, flush=True)
        print(report("Redis flushed (sweep only)", flushed, left_out), flush=True)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"took {time.monotonic() - began:.0f} s; load average {load} on {os.cpu_count()} CPUs; logs in {tmp}")
        return 0
    finally:
        if stack is not None:
            stack.close()
        drop_database(name)


if __name__ == "__main__":
    sys.exit(main())
