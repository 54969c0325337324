"""DBOS Transact baseline: per workload, a ``@DBOS.workflow()`` of N ``@DBOS.step()`` calls.

DBOS is a library that runs inside the application's own processes, so the
harness starts ``--concurrency`` processes, each of which launches DBOS on
the benchmark database and serves a line protocol on stdin/stdout:

- ``throughput WORKLOAD K N``: start K workflows with ``DBOS.start_workflow``,
  wait for all, answer ``done K``;
- ``latency WORKLOAD R N``: one warm-up run, then R runs one at a time, answer
  ``latency`` followed by the milliseconds of each;
- ``quit``: shut DBOS down and exit (which also flushes PostgreSQL's
  statistics for this process's connections).

Workflows run in DBOS's own thread pool, as an application that embeds DBOS
runs them (a DBOS queue would only add its polling interval between enqueue
and start). Per workload:

- ``sequential``: N steps called one after the other;
- ``queued``: each step enqueued on the DBOS queue ``bench.acts``, which only a
  second set of processes dequeues (``listen_queues``), and its handle awaited:
  DBOS's way of running a step in other worker processes. Both the queue and
  the handle poll the database, every ``POLL_S``;
- ``fanout``: an async workflow whose N async steps run at once under
  ``asyncio.gather``, DBOS's documented form of parallel steps;
- ``timers``: ``DBOS.sleep`` between two steps.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from dbos import DBOS, DBOSConfig

from bench.config import ACTS_QUEUE, TIMER_SLEEP_S

APP_NAME = "continuum-bench"
#: Polling interval of the ``queued`` workload's queue and handles, in seconds (DBOS's default: 1.0).
POLL_S = 0.05
LISTENING_DEADLINE_S = 10.0


@DBOS.step()
def noop(i: int) -> int:
    """One trivial step: return its argument."""
    return i


@DBOS.step()
async def noop_async(i: int) -> int:
    """``noop`` as a coroutine, so that ``asyncio.gather`` runs several at once."""
    return i


@DBOS.workflow()
def bench_flow(n: int) -> int:
    """Run ``noop`` ``n`` times, one after the other, and return the sum."""
    total = 0
    for i in range(n):
        total += noop(i)
    return total


@DBOS.workflow()
def queued_flow(n: int) -> int:
    """``bench_flow`` with every step enqueued on ``ACTS_QUEUE`` and run by another process."""
    queue = DBOS.retrieve_queue(ACTS_QUEUE)
    assert queue is not None, f"queue {ACTS_QUEUE} is not registered"
    total = 0
    for i in range(n):
        total += queue.enqueue(noop, i).get_result(polling_interval_sec=POLL_S)
    return total


@DBOS.workflow()
async def fanout_flow(n: int) -> int:
    """Run ``n`` ``noop_async`` at once and return the sum."""
    return sum(await asyncio.gather(*(noop_async(i) for i in range(n))))


@DBOS.workflow()
def timers_flow(n: int) -> int:
    """``bench_flow`` with a durable ``DBOS.sleep`` of ``TIMER_SLEEP_S`` between two steps."""
    total = 0
    for i in range(n):
        if i:
            DBOS.sleep(TIMER_SLEEP_S)
        total += noop(i)
    return total


FLOWS: dict[str, Callable[[int], Any]] = {
    "sequential": bench_flow,
    "queued": queued_flow,
    "fanout": fanout_flow,
    "timers": timers_flow,
}


def expected_result(steps: int) -> int:
    """What every workload's workflow returns for ``steps``: the sum of 0..steps-1."""
    return steps * (steps - 1) // 2


def prepare(database_url: str) -> None:
    """Create DBOS's system tables once, before several processes launch at the same time."""
    from dbos import run_dbos_database_migrations

    run_dbos_database_migrations(database_url)


def serve(database_url: str, listen: list[str] | None) -> None:
    """Launch DBOS and answer the harness's commands until ``quit`` or end of input.

    ``listen``: the queues this process dequeues from (None: every queue, DBOS's default).
    """
    # The protocol owns the real stdout; anything DBOS prints goes to stderr (the log).
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    config: DBOSConfig = {
        "name": APP_NAME,
        "system_database_url": database_url,
        # Unique per process, as DBOS requires when several processes share a database.
        "executor_id": f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        "log_level": "WARNING",
    }
    DBOS(config=config)
    if listen is not None:
        DBOS.listen_queues(listen)
    DBOS.launch()
    DBOS.register_queue(ACTS_QUEUE, polling_interval_sec=POLL_S, on_conflict="never_update")
    if listen and ACTS_QUEUE in listen:
        _wait_until_listening(ACTS_QUEUE)
    protocol.write("ready\n")
    try:
        for line in sys.stdin:
            command, *args = line.split()
            if command == "throughput":
                flow, count, steps = FLOWS[args[0]], int(args[1]), int(args[2])
                handles = [DBOS.start_workflow(flow, steps) for _ in range(count)]
                wrong = [h for h in handles if h.get_result() != expected_result(steps)]
                if wrong:
                    protocol.write(f"error {len(wrong)} workflows returned a wrong result\n")
                    return
                protocol.write(f"done {count}\n")
            elif command == "latency":
                flow, runs, steps = FLOWS[args[0]], int(args[1]), int(args[2])
                DBOS.start_workflow(flow, steps).get_result()
                times = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    DBOS.start_workflow(flow, steps).get_result()
                    times.append((time.perf_counter() - t0) * 1000.0)
                protocol.write("latency " + " ".join(f"{t:.3f}" for t in times) + "\n")
            elif command == "quit":
                return
            else:
                protocol.write(f"error unknown command {command!r}\n")
    finally:
        DBOS.destroy()
        protocol.close()


def _wait_until_listening(queue: str) -> None:
    # DBOS starts a queue's dequeuing thread up to a second after the queue is registered;
    # answering "ready" before then would charge that second to the first steps.
    end = time.monotonic() + LISTENING_DEADLINE_S
    while time.monotonic() < end:
        if any(t.name == f"queue-worker-{queue}" for t in threading.enumerate()):
            return
        time.sleep(0.05)
