"""continuum-celery: the workloads' workflows of N trivial activities, through the public API only.

- ``sequential``: ``ctx.run(noop, i)`` N times; a lone awaited activity on the
  engine's queue runs inline, in the replay task;
- ``queued``: the same with ``queued_noop``, declared on its own queue
  (``bench.acts``): each step is a ``continuum.activity`` message consumed by a
  second worker pool (``-Q bench.acts``), the replays stay on the first;
- ``fanout``: N ``ctx.start_activity`` then ``ctx.gather``;
- ``timers``: ``ctx.sleep`` between two ``ctx.run``.

Workers run ``celery -A bench.continuum_flow worker -B`` (the documented way
to run the engine, beat sweep included); drivers call ``start_run`` /
``wait_run``. With ``BENCH_PROFILE_DIR`` set, each worker process profiles the
tasks it runs (see ``bench.profiling``).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from bench.config import (
    ACTS_QUEUE,
    ENV_PROFILE_DIR,
    TIMER_SLEEP_S,
    database_url_from_env,
    redis_url_from_env,
    sqlalchemy_url,
)
from continuum_celery import Continuum, activity, workflow

DATABASE_URL = sqlalchemy_url(database_url_from_env())
REDIS_URL = redis_url_from_env()

app = Celery("bench_continuum", broker=REDIS_URL)
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
continuum = Continuum(app, database_url=DATABASE_URL, redis_url=REDIS_URL)

if os.environ.get(ENV_PROFILE_DIR):
    from bench.profiling import install_worker_profiler

    install_worker_profiler(os.environ[ENV_PROFILE_DIR])


@activity
def noop(i: int) -> int:
    """One trivial activity: return its argument."""
    return i


@activity(queue=ACTS_QUEUE)
def queued_noop(i: int) -> int:
    """``noop`` on a queue of its own, served by the second worker pool."""
    return i


def _run_in_turn(ctx: Any, act: Any, n: int) -> int:
    total = 0
    for i in range(n):
        total += ctx.run(act, i)
    return total


@workflow
def bench_flow(ctx: Any, n: int) -> int:
    """Run ``noop`` ``n`` times, one after the other, and return the sum."""
    return _run_in_turn(ctx, noop, n)


@workflow
def queued_flow(ctx: Any, n: int) -> int:
    """``bench_flow`` with every step on the activities' own queue."""
    return _run_in_turn(ctx, queued_noop, n)


@workflow
def fanout_flow(ctx: Any, n: int) -> int:
    """Start ``n`` ``noop`` at once, wait for all, return the sum."""
    return sum(ctx.gather([ctx.start_activity(noop, i) for i in range(n)]))


@workflow
def timers_flow(ctx: Any, n: int) -> int:
    """``bench_flow`` with a durable sleep of ``TIMER_SLEEP_S`` between two steps."""
    total = 0
    for i in range(n):
        if i:
            ctx.sleep(TIMER_SLEEP_S)
        total += ctx.run(noop, i)
    return total


FLOWS = {"sequential": bench_flow, "queued": queued_flow, "fanout": fanout_flow, "timers": timers_flow}


def prepare() -> None:
    """Apply the journal schema to the benchmark database."""
    from continuum_celery.journal.schema import migrate

    migrate(DATABASE_URL)


def start_run(workload: str, steps: int) -> Any:
    """Start one run of the workload's workflow and return its ``RunHandle``."""
    return FLOWS[workload].start(steps)


def wait_run(handle: Any, timeout: float) -> int:
    """Block until the run has finished and return its result."""
    value: int = handle.result(timeout=timeout)
    return value


def expected_result(workload: str, steps: int) -> int:
    """What every workload's workflow returns for ``steps``: the sum of 0..steps-1."""
    return steps * (steps - 1) // 2
