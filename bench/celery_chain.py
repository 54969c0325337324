"""Plain Celery baseline: a ``chain`` of N trivial tasks, the cost without durability.

Workers run ``celery -A bench.celery_chain worker``; drivers call
``start_run`` / ``wait_run``. The result backend is the benchmark's Redis
database, as a Celery user waiting on a chain would configure it.

``step_commit`` is the same task plus one PostgreSQL commit: a floor for what
persisting each step costs, without any engine around it.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chain
from celery.result import AsyncResult

from bench.config import database_url_from_env, redis_url_from_env

QUEUE = "bench.celery"
STEPS_TABLE = "bench_celery_steps"

app = Celery("bench_celery", broker=redis_url_from_env(), backend=redis_url_from_env())
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    worker_hijack_root_logger=False,
)

_connection: Any = None


@app.task(name="bench.step")
def step(acc: int) -> int:
    """One trivial step: add one."""
    return acc + 1


@app.task(name="bench.step_commit")
def step_commit(acc: int) -> int:
    """One trivial step that also commits one row to PostgreSQL."""
    global _connection
    if _connection is None:
        # Opened lazily so that each prefork child has its own connection.
        import psycopg

        _connection = psycopg.connect(database_url_from_env(), autocommit=True)
    _connection.execute(f"INSERT INTO {STEPS_TABLE} (acc) VALUES (%s)", (acc,))
    return acc + 1


def prepare(commit: bool = False) -> None:
    """Create the table ``step_commit`` writes to (only needed with ``commit``)."""
    if not commit:
        return
    import psycopg

    with psycopg.connect(database_url_from_env(), autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {STEPS_TABLE}"
            " (id bigserial PRIMARY KEY, acc integer NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        )


def start_run(steps: int, commit: bool = False) -> AsyncResult:
    """Send a chain of ``steps`` tasks; the result is that of the last one."""
    task = step_commit if commit else step
    return chain(task.s(0), *(task.s() for _ in range(steps - 1))).apply_async()


def wait_run(result: AsyncResult, timeout: float) -> int:
    """Block until the chain's last task has finished and return its value."""
    value: int = result.get(timeout=timeout)
    return value


def expected_result(steps: int) -> int:
    """What a chain of ``steps`` tasks returns."""
    return steps
