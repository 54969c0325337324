"""One repetition of one system, and the setup every repetition shares.

A repetition is two worker lifetimes on a freshly flushed Redis database:

1. throughput: read the PostgreSQL counters with no benchmark backend
   connected, start the workers, run W workflows at once, stop the workers,
   wait until every backend has exited (which is when PostgreSQL publishes
   their counts), read the counters again. Commits per step therefore include
   the workers' start and stop, amortised over W x N steps. CPU time
   (``bench.cpu``) covers only the phase itself, from the workers being ready
   to the last run's end: start-up and shutdown are left out.
2. latency: start the workers again and run single workflows one at a time,
   so the latency runs never land in the throughput counters.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from bench.config import BenchConfig
from bench.cpu import CpuSampler, CpuSplit, local_postmaster, redis_cpu
from bench.measure import delta, per_step, percentile, pg_counters, wait_for_no_clients
from bench.procs import BenchError
from bench.systems import System

BACKENDS_GONE_DEADLINE_S = 60.0
REDIS_MARKER_KEY = "continuum-bench:owner"
# Keys of the test suite (tests/conftest.py prefixes them so); never flush those.
TEST_KEY_PATTERN = "ctest:*"


@dataclass(frozen=True)
class Repetition:
    """Figures of one repetition of one system."""

    workflows_per_s: float
    steps_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    commits_per_step: float | None
    write_xacts_per_step: float | None
    wal_records_per_step: float | None
    redis_cmds_per_step: float | None
    cpu_ms_per_step: float | None = None
    cpu_workers_ms_per_step: float | None = None
    cpu_pg_ms_per_step: float | None = None
    cpu_redis_ms_per_step: float | None = None


def ensure_fresh_database(cfg: BenchConfig) -> None:
    """Drop and recreate the benchmark database, so every invocation starts empty."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(cfg.pg_admin_url, autocommit=True) as conn:
        name = sql.Identifier(cfg.db_name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


def flush_redis(cfg: BenchConfig) -> None:
    """Empty the benchmark's Redis database (and only that one), then mark it as the benchmark's.

    Raises:
        BenchError: the database holds keys the benchmark did not create (another
            user's data, e.g. a test run's), so it is left untouched.
    """
    import redis

    client = redis.Redis.from_url(cfg.redis_url)
    try:
        foreign = next(iter(client.scan_iter(match=TEST_KEY_PATTERN, count=1000)), None)
        if foreign is not None or (client.dbsize() and not client.exists(REDIS_MARKER_KEY)):
            raise BenchError(
                f"Redis {cfg.redis_url} holds keys the benchmark did not create"
                f" (e.g. {foreign!r}); refusing to flush it. Pass --redis-url with a free"
                " database number."
            )
        client.flushdb()
        client.set(REDIS_MARKER_KEY, "continuum-celery benchmark")
    finally:
        client.close()


def _settle(cfg: BenchConfig) -> None:
    if not wait_for_no_clients(cfg.pg_admin_url, cfg.db_name, BACKENDS_GONE_DEADLINE_S):
        print(
            f"  warning: connections to {cfg.db_name} still open after"
            f" {BACKENDS_GONE_DEADLINE_S:.0f}s; PG counters may be incomplete",
            file=sys.stderr,
        )


def run_repetition(system: System, cfg: BenchConfig, logs: Path) -> Repetition:
    """Measure one repetition of ``system`` (see the module docstring for the phases)."""
    flush_redis(cfg)
    _settle(cfg)
    pg_before = pg_counters(cfg.pg_admin_url, cfg.db_name)
    postmaster = local_postmaster(cfg.pg_admin_url)
    with system.workers(cfg, logs) as workers:
        redis_cpu_before = redis_cpu(cfg.redis_url)
        sampler = CpuSampler(workers.sessions, postmaster=postmaster, admin_url=cfg.pg_admin_url, db_name=cfg.db_name)
        with sampler:
            phase = system.throughput(cfg, workers, logs)
        redis_ms = (redis_cpu(cfg.redis_url) - redis_cpu_before) * 1000.0
    cpu = CpuSplit(sampler.workers_ms + phase.driver_cpu_ms, sampler.pg_ms, redis_ms).per_step(cfg.total_steps)
    _settle(cfg)
    pg = delta(pg_before, pg_counters(cfg.pg_admin_url, cfg.db_name))

    flush_redis(cfg)
    latencies: list[float] = []
    if cfg.latency_runs > 0:
        with system.workers(cfg, logs) as workers:
            latencies = system.latency(cfg, workers, logs)

    steps = cfg.total_steps
    return Repetition(
        workflows_per_s=cfg.workflows / phase.elapsed,
        steps_per_s=steps / phase.elapsed,
        p50_ms=percentile(latencies, 50) if latencies else None,
        p90_ms=percentile(latencies, 90) if latencies else None,
        commits_per_step=per_step(pg.get("xact_commit"), steps),
        write_xacts_per_step=per_step(pg.get("write_xacts"), steps),
        wal_records_per_step=per_step(pg.get("wal_records"), steps),
        redis_cmds_per_step=per_step(phase.redis_calls, steps),
        cpu_ms_per_step=cpu.total_ms,
        cpu_workers_ms_per_step=cpu.workers_ms,
        cpu_pg_ms_per_step=cpu.pg_ms,
        cpu_redis_ms_per_step=cpu.redis_ms,
    )
