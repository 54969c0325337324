"""``python -m bench.scale``: what a journal of millions of runs costs a start, a step and a sweep.

Two journals side by side: ``continuum_scale_empty``, and ``continuum_scale_full``
filled with ``--finished`` finished runs of 10 events each (default 1,000,000)
and ``--suspended`` suspended runs (default 100,000: half asleep on a 30-day
timer, half waiting for a signal). Both are dropped and recreated per
invocation, and dropped at the end unless ``--keep``.

The filled runs are copies of runs the engine itself wrote into the full
journal first (``bench.scale_drive templates``, through real workers),
inserted inside PostgreSQL in batches (``bench.fill``), so their rows, indexes
and TOAST are what a real journal's would be; then ``VACUUM ANALYZE``. The
workflows are the ones the measuring workers serve, so a statement that
narrows only by workflow or state reads the copies too.

Then, ``--repetitions`` times, on each journal in turn (alternating which goes
first, so a machine whose load drifts weighs on both alike):
``celery -A bench.scale_app worker`` (prefork, ``--concurrency`` processes, no
beat: each worker sweeps by itself), and one driver that runs ``--runs`` single
runs of ``bench_flow`` (``--steps`` inline activities, one run at a time),
timing ``start()`` and the rest of each run per step, then times ``--sweeps``
sweeps of its own. Latencies are medians over every run (sweep) of every
repetition on one journal; the ratios full/empty are set against the 1.2x
target. Beside them, a figure no load on the machine moves: the PostgreSQL
blocks (8 KiB pages) the journal's tables and indexes were read from per
measured run (``pg_statio_user_tables``, read with no backend connected, so
every backend has published its counts; worker boot, warm-up and sweeps
included), and how many of those were not in shared buffers. Last, the full
journal's tables: rows, bytes (``pg_total_relation_size``: heap, TOAST and
indexes), bytes per run and per event.

Example::

    python -m bench.scale --finished 100000 --suspended 10000 --repetitions 2
    python -m bench.scale --keep            # then, measuring again without refilling:
    python -m bench.scale --reuse
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench import config
from bench.config import BenchConfig, sqlalchemy_url
from bench.fill import copy_run
from bench.measure import median, wait_for_no_clients
from bench.procs import BenchError, run_driver
from bench.runner import ensure_fresh_database, flush_redis
from bench.systems import CeleryWorkerSystem

DEFAULT_FINISHED = 1_000_000
DEFAULT_SUSPENDED = 100_000
DEFAULT_BATCH = 50_000
DEFAULT_RUNS = 20
DEFAULT_SWEEPS = 10
DEFAULT_REPETITIONS = 5
BACKENDS_GONE_DEADLINE_S = 60.0
DB_PREFIX = "continuum_scale"
TARGET = 1.2
#: (label, key, unit) of each figure; the latencies are what the 1.2x target is about.
FIGURES = (
    ("start p50", "start_ms", "ms"),
    ("step p50", "step_ms", "ms"),
    ("sweep p50", "sweep_ms", "ms"),
    ("PG blocks/run", "blocks", ""),
    ("  not cached", "blocks_read", ""),
)
TIMED = ("start_ms", "step_ms", "sweep_ms")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; see ``python -m bench.scale --help``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description="Start, step and sweep latency on a journal of millions of runs."
    )
    parser.add_argument("--finished", type=int, default=DEFAULT_FINISHED, help="finished runs (10 events each)")
    parser.add_argument("--suspended", type=int, default=DEFAULT_SUSPENDED, help="suspended runs")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="runs copied per transaction")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="single runs measured per repetition")
    parser.add_argument("--steps", "-N", type=int, default=config.DEFAULT_STEPS, help="activities per measured run")
    parser.add_argument("--sweeps", type=int, default=DEFAULT_SWEEPS, help="sweeps timed per repetition")
    parser.add_argument("--repetitions", "-R", type=int, default=DEFAULT_REPETITIONS)
    parser.add_argument("--concurrency", "-C", type=int, default=config.DEFAULT_CONCURRENCY, help="worker processes")
    parser.add_argument("--timeout", type=float, default=config.DEFAULT_TIMEOUT, help="seconds per driver action")
    config.add_server_arguments(parser, "the two databases")
    parser.add_argument("--keep", action="store_true", help=f"keep the {DB_PREFIX}_* databases afterwards")
    parser.add_argument(
        "--reuse", action="store_true", help="measure the journals a --keep run left, without recreating and filling"
    )
    args = parser.parse_args(argv)
    for option in ("finished", "suspended"):
        if getattr(args, option) < 0:
            parser.error(f"--{option} must be 0 or more")
    for option in ("batch", "runs", "steps", "sweeps", "repetitions", "concurrency"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1")
    return args


WORKERS = CeleryWorkerSystem("scale", "continuum", "bench.scale_app", queue=None, beat=False)


def _drive(cfg: BenchConfig, logs: Path, *args: str) -> dict[str, Any]:
    return run_driver(
        args,
        env=cfg.subprocess_env(),
        timeout=cfg.timeout + 60.0,
        log_path=logs / f"{cfg.db_name}-driver.log",
        module="bench.scale_drive",
    )


def fill(cfg: BenchConfig, templates: dict[str, str], finished: int, suspended: int, batch: int) -> None:
    """Copy the template runs into ``cfg``'s journal, ``batch`` runs per transaction, then VACUUM ANALYZE."""
    series = (
        ("finished", finished),
        ("sleeper", suspended // 2),
        ("waiter", suspended - suspended // 2),
    )
    began = time.monotonic()
    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        for tag, total in series:
            done = 0
            while done < total:
                count = min(batch, total - done)
                with conn.transaction():
                    copy_run(conn, templates[tag], tag=tag, first=done + 1, count=count)
                done += count
                elapsed = time.monotonic() - began
                print(f"  fill: {tag} {done:,}/{total:,} ({elapsed:.0f} s)", flush=True)
        conn.execute("VACUUM ANALYZE")
    print(f"  fill: done, VACUUM ANALYZE included, in {time.monotonic() - began:.0f} s", flush=True)


@dataclass(frozen=True)
class TableSize:
    """One table of the journal: exact rows, and bytes (``total`` = heap + TOAST + indexes)."""

    name: str
    rows: int
    heap: int
    toast: int
    indexes: int
    total: int


def table_sizes(database_url: str) -> list[TableSize]:
    """Rows and bytes of every continuum table of the database, largest first."""
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT c.relname, pg_relation_size(c.oid), pg_indexes_size(c.oid), pg_total_relation_size(c.oid) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname LIKE 'continuum\\_%' "
            "ORDER BY pg_total_relation_size(c.oid) DESC"
        ).fetchall()
        sizes = []
        for name, heap, indexes, total in found:
            (rows,) = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone() or (0,)
            sizes.append(TableSize(name, rows, heap, total - heap - indexes, indexes, total))
    return sizes


def render_sizes(sizes: list[TableSize]) -> str:
    """The size table, and the bytes per run (all tables) and per event (the events table)."""
    runs = next((s.rows for s in sizes if s.name == "continuum_runs"), 0) or 1
    events = next((s for s in sizes if s.name == "continuum_events"), None)
    header = ["table", "rows", "heap MB", "TOAST MB", "index MB", "total MB", "bytes/row", "bytes/run"]
    rows = [
        [
            s.name,
            f"{s.rows:,}",
            *(f"{b / 2**20:,.1f}" for b in (s.heap, s.toast, s.indexes, s.total)),
            f"{s.total / s.rows:,.0f}" if s.rows else "-",
            f"{s.total / runs:,.0f}",
        ]
        for s in sizes
    ]
    total = sum(s.total for s in sizes)
    rows.append(["all tables", "", "", "", "", f"{total / 2**20:,.1f}", "", f"{total / runs:,.0f}"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))])
        for r in [header, *rows]
    ]
    lines.append(f"bytes per run (all tables, indexes included): {total / runs:,.0f}")
    if events is not None and events.rows:
        lines.append(
            f"bytes per event (continuum_events: heap {events.heap / events.rows:,.0f}, "
            f"TOAST {events.toast / events.rows:,.0f}, indexes {events.indexes / events.rows:,.0f}): "
            f"{events.total / events.rows:,.0f}"
        )
    return "\n".join(lines)


def render_ratios(results: dict[str, list[dict[str, Any]]]) -> str:
    """Per figure: each journal's median over all its repetitions, the ratio, and (for latencies) the target."""
    lines = [f"{'':<16}{'empty':>10}{'full':>10}{'full/empty':>12}   target <= {TARGET:.1f}x"]
    for title, key, unit in FIGURES:
        empty, full = (median(v for rep in results[db] for v in rep[key]) for db in ("empty", "full"))
        ratio = full / empty if empty and full is not None else None
        verdict = "" if key not in TIMED or ratio is None else "within" if ratio <= TARGET else "OVER"
        shown = "-" if ratio is None else f"{ratio:.2f}x"
        digits = 2 if unit else 0
        label = f"{title} {unit}".rstrip()
        lines.append(f"{label:<16}{empty or 0:>10.{digits}f}{full or 0:>10.{digits}f}{shown:>12}   {verdict}")
    return "\n".join(lines)


def blocks(cfg: BenchConfig) -> tuple[int, int]:
    """Blocks of the journal's tables and indexes read so far, and how many of them missed shared buffers.

    Read once no backend is connected: a backend publishes its counts when it exits, at the latest.
    """
    if not wait_for_no_clients(cfg.pg_admin_url, cfg.db_name, BACKENDS_GONE_DEADLINE_S):
        print(f"  warning: backends of {cfg.db_name} still connected; block counts may lag", file=sys.stderr)
    columns = ("heap_blks", "idx_blks", "toast_blks", "tidx_blks")
    hits = " + ".join(f"coalesce({c}_hit, 0)" for c in columns)
    reads = " + ".join(f"coalesce({c}_read, 0)" for c in columns)
    with psycopg.connect(cfg.database_url) as conn:
        row = conn.execute(f"SELECT sum({hits}), sum({reads}) FROM pg_statio_user_tables").fetchone()
    hit, read = (int(v or 0) for v in row or (0, 0))
    return hit + read, read


def measure(cfgs: dict[str, BenchConfig], args: argparse.Namespace, logs: Path) -> dict[str, list[dict[str, Any]]]:
    """Every repetition on each journal, alternating which goes first."""
    results: dict[str, list[dict[str, Any]]] = {db: [] for db in cfgs}
    for i in range(args.repetitions):
        for db in list(cfgs) if i % 2 == 0 else list(cfgs)[::-1]:
            cfg = cfgs[db]
            flush_redis(cfg)
            touched, read = blocks(cfg)
            with WORKERS.workers(cfg, logs):
                figures = _drive(
                    cfg, logs, "measure", "--runs", str(args.runs), "--steps", str(args.steps),
                    "--sweeps", str(args.sweeps), "--timeout", str(cfg.timeout),
                )  # fmt: skip
            touched_after, read_after = blocks(cfg)
            figures["blocks"] = [(touched_after - touched) / args.runs]
            figures["blocks_read"] = [(read_after - read) / args.runs]
            results[db].append(figures)
            summary = ", ".join(f"{title} {median(figures[key]) or 0:.2f}" for title, key, _ in FIGURES[:4])
            load = os.getloadavg()[0]
            print(f"  repetition {i + 1}/{args.repetitions}, {db} journal: {summary} (load {load:.2f})", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Fill, measure, report; returns the process exit code."""
    args = parse_args(argv)

    def cfg_for(db: str) -> BenchConfig:
        return BenchConfig(
            steps=args.steps,
            concurrency=args.concurrency,
            timeout=args.timeout,
            pg_admin_url=args.pg_admin_url,
            db_name=f"{DB_PREFIX}_{db}",
            redis_url=args.redis_url,
        )

    cfgs = {db: cfg_for(db) for db in ("empty", "full")}
    journal = f"{args.finished:,} finished + {args.suspended:,} suspended runs"
    print(
        f"bench.scale: {'the journals an earlier --keep run left' if args.reuse else journal} vs an empty journal; "
        f"{args.repetitions} repetitions of {args.runs} runs x {args.steps} steps and {args.sweeps} sweeps; "
        f"{args.concurrency} worker processes, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    from continuum_celery.journal.schema import migrate

    logs = Path(tempfile.mkdtemp(prefix="continuum-bench-scale-"))
    try:
        if args.reuse:
            _require_existing(cfgs.values())
        else:
            flush_redis(cfgs["full"])
            for cfg in cfgs.values():
                ensure_fresh_database(cfg)
                migrate(sqlalchemy_url(cfg.database_url))
            with WORKERS.workers(cfgs["full"], logs):
                templates = _drive(cfgs["full"], logs, "templates", "--timeout", str(args.timeout))
            fill(cfgs["full"], templates, args.finished, args.suspended, args.batch)
        results = measure(cfgs, args, logs)
        print()
        print(render_ratios(results))
        print()
        print(f"the full journal ({cfgs['full'].db_name}):")
        print(render_sizes(table_sizes(cfgs["full"].database_url)))
    except BenchError as exc:
        print(f"error: {exc}\nworker and driver logs: {logs}", file=sys.stderr)
        return 1
    finally:
        if not (args.keep or args.reuse):
            _drop(cfgs.values())
    shutil.rmtree(logs, ignore_errors=True)
    return 0


def _require_existing(cfgs: Any) -> None:
    with psycopg.connect(next(iter(cfgs)).pg_admin_url, autocommit=True) as conn:
        for cfg in cfgs:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (cfg.db_name,)).fetchone() is None:
                raise BenchError(f"--reuse: no database {cfg.db_name}; run once with --keep first")


def _drop(cfgs: Any) -> None:
    with psycopg.connect(next(iter(cfgs)).pg_admin_url, autocommit=True) as conn:
        for cfg in cfgs:
            conn.execute(f'DROP DATABASE IF EXISTS "{cfg.db_name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
