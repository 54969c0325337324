"""Subprocess entry point: ``python -m bench.drive SYSTEM ACTION [options]``.

Drivers run in their own process so that their database connections close
(and PostgreSQL publishes their statistics) before the harness reads the
counters, and so that the system's modules are imported under their real
names (task and workflow names derive from them).

Actions: ``prepare``; ``throughput`` (W runs of a workload submitted at once,
or in batches of ``--batch``, time until all have finished, Redis commands in
that window and the driver's own CPU milliseconds over it); ``latency`` (one
warm-up run, then runs one at a time); ``serve`` (DBOS only, see
``bench.dbos_flow``).
"""

from __future__ import annotations

import argparse
import functools
import resource
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.config import database_url_from_env, redis_url_from_env
from bench.measure import delta, redis_counters
from bench.procs import emit_result
from bench.workloads import WORKLOADS

Start = Callable[[int], Any]
Wait = Callable[[Any, float], Any]


def _workload(system: str, workload: str) -> tuple[Start, Wait, Callable[[int], int]]:
    if system in ("celery", "celery-commit"):
        from bench import celery_chain

        start = functools.partial(celery_chain.start_run, workload, commit=system == "celery-commit")
        return start, celery_chain.wait_run, functools.partial(celery_chain.expected_result, workload)
    if system == "continuum":
        from bench import continuum_flow

        start = functools.partial(continuum_flow.start_run, workload)
        return start, continuum_flow.wait_run, functools.partial(continuum_flow.expected_result, workload)
    raise SystemExit(f"no driver workload for system {system!r}")


def _own_cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000.0


def throughput(system: str, workload: str, workflows: int, steps: int, timeout: float, batch: int) -> dict[str, Any]:
    """Run ``workflows`` runs, ``batch`` at a time, and time until every one has finished."""
    start, wait, expected = _workload(system, workload)
    redis_before = redis_counters(redis_url_from_env())
    cpu_before = _own_cpu_ms()
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    for first in range(0, workflows, batch):
        handles = [start(steps) for _ in range(min(batch, workflows - first))]
        for handle in handles:
            value = wait(handle, max(deadline - time.monotonic(), 0.001))
            if value != expected(steps):
                raise SystemExit(f"a run returned {value!r}, expected {expected(steps)!r}")
    elapsed = time.perf_counter() - t0
    cpu_ms = _own_cpu_ms() - cpu_before
    redis_after = redis_counters(redis_url_from_env())
    return {"elapsed": elapsed, "redis_calls": sum(delta(redis_before, redis_after).values()), "cpu_ms": cpu_ms}


def latency(system: str, workload: str, runs: int, steps: int, timeout: float) -> dict[str, Any]:
    """One warm-up run, then ``runs`` runs one at a time; milliseconds of each."""
    start, wait, expected = _workload(system, workload)
    wait(start(steps), timeout)
    latencies = []
    for _ in range(runs):
        t0 = time.perf_counter()
        value = wait(start(steps), timeout)
        latencies.append((time.perf_counter() - t0) * 1000.0)
        if value != expected(steps):
            raise SystemExit(f"a run returned {value!r}, expected {expected(steps)!r}")
    return {"latencies_ms": latencies}


def prepare(system: str) -> dict[str, Any]:
    """Create whatever the system needs in the benchmark database."""
    if system in ("celery", "celery-commit"):
        from bench import celery_chain

        celery_chain.prepare(commit=system == "celery-commit")
    elif system == "continuum":
        from bench import continuum_flow

        continuum_flow.prepare()
    elif system == "dbos":
        from bench import dbos_flow

        dbos_flow.prepare(database_url_from_env())
    return {"prepared": system}


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, run one action, print its result."""
    parser = argparse.ArgumentParser(prog="python -m bench.drive")
    parser.add_argument("system", choices=["celery", "celery-commit", "continuum", "dbos"])
    parser.add_argument("action", choices=["prepare", "throughput", "latency", "serve"])
    parser.add_argument("--workload", choices=list(WORKLOADS), default="sequential")
    parser.add_argument("--workflows", type=int, default=1)
    parser.add_argument("--batch", type=int, default=0, help="runs in flight at once (0: all)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--listen", default=None, help="serve: comma-separated DBOS queues to dequeue from")
    args = parser.parse_args(argv)

    if args.action == "serve":
        from bench import dbos_flow

        listen = None if args.listen is None else [q for q in args.listen.split(",") if q]
        dbos_flow.serve(database_url_from_env(), listen)
    elif args.action == "prepare":
        emit_result(prepare(args.system))
    elif args.action == "throughput":
        batch = args.batch or args.workflows
        emit_result(throughput(args.system, args.workload, args.workflows, args.steps, args.timeout, batch))
    else:
        emit_result(latency(args.system, args.workload, args.runs, args.steps, args.timeout))


if __name__ == "__main__":
    main()
