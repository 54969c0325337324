"""continuum-celery: a workflow of N trivial activities, through the public API only.

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
    ENV_PROFILE_DIR,
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


@workflow
def bench_flow(ctx: Any, n: int) -> int:
    """Run ``noop`` ``n`` times, one after the other, and return the sum."""
    total = 0
    for i in range(n):
        total += ctx.run(noop, i)
    return total


def prepare() -> None:
    """Apply the journal schema to the benchmark database."""
    from continuum_celery.journal.schema import migrate

    migrate(DATABASE_URL)


def start_run(steps: int) -> Any:
    """Start one run of ``bench_flow`` and return its ``RunHandle``."""
    return bench_flow.start(steps)


def wait_run(handle: Any, timeout: float) -> int:
    """Block until the run has finished and return its result."""
    value: int = handle.result(timeout=timeout)
    return value


def expected_result(steps: int) -> int:
    """What ``bench_flow(steps)`` returns."""
    return steps * (steps - 1) // 2
