"""Plain Celery baseline: a ``chain`` of N trivial tasks, the cost without durability.

Per workload:

- ``sequential``: the chain on the default queue (``bench.celery``);
- ``queued``: the same chain with every task routed to ``bench.acts``, which a
  second worker pool consumes while the first serves ``bench.celery``, as the
  continuum workload is routed;
- ``fanout``: a ``chord`` of N tasks and a join callback (the join is not a step);
- ``timers``: the chain with a ``countdown`` of ``TIMER_SLEEP_S`` on every task
  but the first (Celery's delay between two steps; not durable).

Workers run ``celery -A bench.celery_chain worker``; drivers call
``start_run`` / ``wait_run``. The result backend is the benchmark's Redis
database, as a Celery user waiting on a chain would configure it.

``step_commit`` is the same task plus one PostgreSQL commit: a floor for what
persisting each step costs, without any engine around it.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chain, chord
from celery.canvas import Signature
from celery.result import AsyncResult

from bench.config import ACTS_QUEUE, TIMER_SLEEP_S, database_url_from_env, redis_url_from_env

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


@app.task(name="bench.echo")
def echo(i: int) -> int:
    """One trivial step of a fan-out: return its argument."""
    return i


@app.task(name="bench.join")
def join(values: list[int]) -> int:
    """The chord's callback: the sum of the fan-out's results."""
    return sum(values)


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


def start_run(workload: str, steps: int, commit: bool = False) -> AsyncResult:
    """Send the workload's canvas of ``steps`` tasks; the result is that of its last task."""
    if workload == "fanout":
        return chord([echo.s(i) for i in range(steps)])(join.s())
    task = step_commit if commit else step
    links: list[Signature] = [task.s(0), *(task.s() for _ in range(steps - 1))]
    if workload == "queued":
        links = [link.set(queue=ACTS_QUEUE) for link in links]
    elif workload == "timers":
        links = [links[0], *(link.set(countdown=TIMER_SLEEP_S) for link in links[1:])]
    return chain(*links).apply_async()


def wait_run(result: AsyncResult, timeout: float) -> int:
    """Block until the canvas's last task has finished and return its value."""
    value: int = result.get(timeout=timeout)
    return value


def expected_result(workload: str, steps: int) -> int:
    """What the workload's canvas of ``steps`` tasks returns."""
    return steps * (steps - 1) // 2 if workload == "fanout" else steps
