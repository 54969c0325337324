"""Settings shared by the harness and the subprocesses it starts.

The harness passes connection URLs to workers and drivers through environment
variables, so a worker module can build its app at import time, as
``celery -A module worker`` requires.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_DB_NAME = "continuum_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"

DEFAULT_STEPS = 10
DEFAULT_WORKFLOWS = 200
DEFAULT_CONCURRENCY = 2
DEFAULT_REPETITIONS = 3
DEFAULT_LATENCY_RUNS = 20
DEFAULT_TIMEOUT = 900.0

#: Queue of the activities of the ``queued`` workload, served by a second worker pool.
ACTS_QUEUE = "bench.acts"
#: Durable sleep between two steps of the ``timers`` workload, in seconds.
TIMER_SLEEP_S = 0.1

ENV_DATABASE_URL = "BENCH_DATABASE_URL"
ENV_REDIS_URL = "BENCH_REDIS_URL"
ENV_PROFILE_DIR = "BENCH_PROFILE_DIR"


@dataclass(frozen=True)
class BenchConfig:
    """Everything one invocation of ``python -m bench`` needs.

    Attributes:
        steps: activities / tasks / steps per workflow (N).
        workflows: workflows submitted at once in the throughput phase (W).
        concurrency: worker processes (Celery ``--concurrency``, DBOS processes).
        repetitions: repetitions per system; figures are medians across them.
        latency_runs: single runs, one at a time, for p50/p90.
        timeout: seconds one phase may take before it counts as failed.
        pg_admin_url: libpq URL of a database used to create the bench database.
        db_name: name of the dedicated benchmark database.
        redis_url: Redis URL including the dedicated database number.
        workload: the workload measured (see ``bench.workloads``).
    """

    steps: int = DEFAULT_STEPS
    workflows: int = DEFAULT_WORKFLOWS
    concurrency: int = DEFAULT_CONCURRENCY
    repetitions: int = DEFAULT_REPETITIONS
    latency_runs: int = DEFAULT_LATENCY_RUNS
    timeout: float = DEFAULT_TIMEOUT
    pg_admin_url: str = DEFAULT_PG_ADMIN_URL
    db_name: str = DEFAULT_DB_NAME
    redis_url: str = DEFAULT_REDIS_URL
    workload: str = "sequential"

    @property
    def database_url(self) -> str:
        """libpq URL of the benchmark database (psycopg, DBOS)."""
        return self.pg_admin_url.rsplit("/", 1)[0] + f"/{self.db_name}"

    @property
    def total_steps(self) -> int:
        """Steps executed by one throughput phase."""
        return self.steps * self.workflows

    def subprocess_env(self, **extra: str) -> dict[str, str]:
        """Environment for a worker or driver subprocess."""
        env = dict(os.environ)
        env[ENV_DATABASE_URL] = self.database_url
        env[ENV_REDIS_URL] = self.redis_url
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env.update(extra)
        return env


def database_url_from_env() -> str:
    """The libpq URL of the benchmark database, as the harness passed it."""
    return os.environ.get(ENV_DATABASE_URL, DEFAULT_PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{DEFAULT_DB_NAME}")


def redis_url_from_env() -> str:
    """The Redis URL (with the benchmark's database number), as the harness passed it."""
    return os.environ.get(ENV_REDIS_URL, DEFAULT_REDIS_URL)


def sqlalchemy_url(libpq_url: str) -> str:
    """Turn ``postgresql://...`` into the SQLAlchemy psycopg 3 form."""
    scheme, _, rest = libpq_url.partition("://")
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return libpq_url


def add_server_arguments(parser: argparse.ArgumentParser, databases: str) -> None:
    """``--pg-admin-url`` and ``--redis-url``, which every bench command takes; ``databases`` says which it makes."""
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("BENCH_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL),
        help=f"libpq URL used to (re)create {databases}",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get(ENV_REDIS_URL, DEFAULT_REDIS_URL),
        help="Redis URL with the benchmark's own database number (flushed)",
    )
