"""DBOS Transact baseline: a ``@DBOS.workflow()`` calling N ``@DBOS.step()`` s.

DBOS is a library that runs inside the application's own processes, so the
harness starts ``--concurrency`` processes, each of which launches DBOS on
the benchmark database and serves a line protocol on stdin/stdout:

- ``throughput K N``: start K workflows with ``DBOS.start_workflow``, wait
  for all, answer ``done K``;
- ``latency R N``: one warm-up call, then R calls of the workflow one at a
  time, answer ``latency`` followed by the milliseconds of each;
- ``quit``: shut DBOS down and exit (which also flushes PostgreSQL's
  statistics for this process's connections).

Workflows run in DBOS's own thread pool, as an application that embeds DBOS
runs them; a DBOS queue would only add its polling interval between enqueue
and start.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

from dbos import DBOS, DBOSConfig

APP_NAME = "continuum-bench"


@DBOS.step()
def noop(i: int) -> int:
    """One trivial step: return its argument."""
    return i


@DBOS.workflow()
def bench_flow(n: int) -> int:
    """Run ``noop`` ``n`` times, one after the other, and return the sum."""
    total = 0
    for i in range(n):
        total += noop(i)
    return total


def expected_result(steps: int) -> int:
    """What ``bench_flow(steps)`` returns."""
    return steps * (steps - 1) // 2


def prepare(database_url: str) -> None:
    """Create DBOS's system tables once, before several processes launch at the same time."""
    from dbos import run_dbos_database_migrations

    run_dbos_database_migrations(database_url)


def serve(database_url: str) -> None:
    """Launch DBOS and answer the harness's commands until ``quit`` or end of input."""
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
    DBOS.launch()
    protocol.write("ready\n")
    try:
        for line in sys.stdin:
            command, *args = line.split()
            if command == "throughput":
                count, steps = int(args[0]), int(args[1])
                handles = [DBOS.start_workflow(bench_flow, steps) for _ in range(count)]
                wrong = [h for h in handles if h.get_result() != expected_result(steps)]
                if wrong:
                    protocol.write(f"error {len(wrong)} workflows returned a wrong result\n")
                    return
                protocol.write(f"done {count}\n")
            elif command == "latency":
                runs, steps = int(args[0]), int(args[1])
                bench_flow(steps)
                times = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    bench_flow(steps)
                    times.append((time.perf_counter() - t0) * 1000.0)
                protocol.write("latency " + " ".join(f"{t:.3f}" for t in times) + "\n")
            elif command == "quit":
                return
            else:
                protocol.write(f"error unknown command {command!r}\n")
    finally:
        DBOS.destroy()
        protocol.close()
