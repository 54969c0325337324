"""Signal throughput into one run: signals/s a run looping on ``wait_signal`` consumes.

Starts a real deployment (a fresh PostgreSQL database, a ``celery worker`` and a
``celery beat`` process, Redis as broker and wake-up store), starts one run that
waits ``--signals`` times in a row for the signal ``go``, and sends it that many
signals one after another from this process. Two modes:

* live: the worker runs while the signals arrive; the time is from the first send
  to the run's end (the sender's own rate is printed too: it bounds this one).
* ``--preload``: the worker is stopped while the signals are sent, then started;
  the time is from its boot to the run's end (the inbox is full at once).

Usage::

    .venv/bin/python bench/signal_throughput.py [--signals 2000] [--preload] [--redis-db 11]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos.conftest import private_stack  # noqa: E402
from tests.conftest import REDIS_BASE, create_database, drop_database  # noqa: E402
from tests.support.stack import Stack, wait_until  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=2000, help="signals sent to the one run")
    parser.add_argument("--preload", action="store_true", help="fill the inbox before a worker runs")
    parser.add_argument("--redis-db", type=int, default=11, help="Redis database (keys are prefixed and removed)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    return parser.parse_args(argv)


def _waiting(stack: Stack) -> bool:
    return bool(stack.sql("SELECT count(*) AS n FROM continuum_timers WHERE kind = 'signal'")[0].n)


def measure(stack: Stack, count: int, preload: bool, concurrency: int) -> str:
    from tests.support.flows_chaos import inbox_flow

    worker = stack.worker(concurrency=concurrency)
    stack.beat()
    handle = inbox_flow.start({"count": count}, run_id="inbox")
    wait_until(lambda: _waiting(stack), 60, "the run to wait for its first signal")
    if preload:
        worker.stop()
    began = time.perf_counter()
    for i in range(count):
        handle.signal("go", i)
    sent = time.perf_counter() - began
    if preload:
        stack.worker(concurrency=concurrency)
        began = time.perf_counter()
    result = handle.result(timeout=3600)
    took = time.perf_counter() - began
    assert result == list(range(count)), "signals lost, duplicated or out of order"
    steps = stack.sql("SELECT count(*) AS n FROM continuum_events WHERE run_id = 'inbox'")[0].n
    mode = "preloaded inbox" if preload else "live"
    return (
        f"{mode}: {count} signals sent in {sent:.1f} s ({count / sent:.0f}/s); consumed in {took:.1f} s "
        f"-> {count / took:.1f} signals/s ({steps} events)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = f"continuum_bench_{uuid.uuid4().hex[:6]}"
    url = create_database(name)
    try:
        with private_stack(url, f"{REDIS_BASE}/{args.redis_db}", Path(tempfile.mkdtemp())) as stack:
            print(measure(stack, args.signals, args.preload, args.concurrency))
    finally:
        drop_database(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
