"""Subprocess entry point of ``python -m bench.scale``: ``python -m bench.scale_drive ACTION [options]``.

One driver process per database (the app binds its journal at import, from
``BENCH_DATABASE_URL``), talking to ``celery -A bench.scale_app worker``
processes through the public API only.

Actions:

- ``templates``: one finished run of ``bench_flow`` (4 activities: 10 events)
  and one suspended run of each of ``sleeper`` and ``waiter``; prints their ids.
- ``measure``: one warm-up run, then ``--runs`` runs of ``bench_flow(--steps)``
  one at a time: how long ``start()`` took, and how long the run then took to
  finish, per step; then ``--sweeps`` sweeps (``Continuum.sweep_once``, what
  beat and every worker run), timed one by one.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from bench.procs import emit_result
from bench.scale_app import bench_flow, continuum, sleeper, waiter

#: Activities of the finished template: run_started, 4 x (scheduled, completed), run_completed.
TEMPLATE_STEPS = 4
#: How long the sleeping template (and each of its copies) sleeps: longer than any bench.
SLEEP_SECONDS = 30 * 86_400.0
SUSPEND_DEADLINE_S = 60.0


def _suspended(handle: Any, events: int) -> None:
    """Wait until the run has journaled ``events`` events and given its lease back."""
    deadline = time.monotonic() + SUSPEND_DEADLINE_S
    while not (handle.status() == "suspended" and len(handle.history()) >= events):
        if time.monotonic() > deadline:
            raise SystemExit(f"run {handle.id} did not suspend after {events} events")
        time.sleep(0.05)


def templates(timeout: float) -> dict[str, Any]:
    """Write the template runs the journal is filled with; their ids."""
    finished = bench_flow.start(TEMPLATE_STEPS)
    finished.result(timeout=timeout)
    asleep, waiting = sleeper.start(SLEEP_SECONDS), waiter.start("never")
    for handle in (asleep, waiting):
        _suspended(handle, 4)  # run_started, activity scheduled and completed, the timer or the wait
    return {"finished": finished.id, "sleeper": asleep.id, "waiter": waiting.id}


def measure(runs: int, steps: int, sweeps: int, timeout: float) -> dict[str, Any]:
    """Start latency and per-step latency of ``runs`` single runs, then the duration of ``sweeps`` sweeps."""
    bench_flow.start(steps).result(timeout=timeout)  # warm-up: connections, imports, prepared statements
    start_ms, step_ms = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        handle = bench_flow.start(steps)
        t1 = time.perf_counter()
        handle.result(timeout=timeout)
        t2 = time.perf_counter()
        start_ms.append((t1 - t0) * 1000.0)
        step_ms.append((t2 - t1) * 1000.0 / steps)
    continuum.sweep_once()  # warm-up
    sweep_ms = []
    for _ in range(sweeps):
        t0 = time.perf_counter()
        continuum.sweep_once()
        sweep_ms.append((time.perf_counter() - t0) * 1000.0)
    return {"start_ms": start_ms, "step_ms": step_ms, "sweep_ms": sweep_ms}


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, run one action, print its result."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale_drive")
    parser.add_argument("action", choices=["templates", "measure"])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sweeps", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.action == "templates":
        emit_result(templates(args.timeout))
    else:
        emit_result(measure(args.runs, args.steps, args.sweeps, args.timeout))


if __name__ == "__main__":
    main()
