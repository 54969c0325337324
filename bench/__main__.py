"""``python -m bench``: measure every selected system and print the table and ratios.

Example::

    python -m bench --steps 10 --workflows 200 --concurrency 2 --repetitions 3
    python -m bench --only celery,dbos --workflows 50 --repetitions 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import config
from bench.config import BenchConfig
from bench.procs import BenchError
from bench.report import FOOTNOTE, Outcome, render_header, render_ratios, render_table
from bench.runner import ensure_fresh_database, flush_redis, run_repetition
from bench.systems import System, all_systems

DEFAULT_ONLY = "celery,continuum,dbos"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; see ``python -m bench --help``."""
    known = ", ".join(all_systems())
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmark continuum-celery against plain Celery and DBOS."
    )
    parser.add_argument("--steps", "-N", type=int, default=config.DEFAULT_STEPS, help="steps per workflow")
    parser.add_argument(
        "--workflows",
        "-W",
        type=int,
        default=config.DEFAULT_WORKFLOWS,
        help="workflows submitted at once",
    )
    parser.add_argument("--concurrency", "-C", type=int, default=config.DEFAULT_CONCURRENCY, help="worker processes")
    parser.add_argument(
        "--repetitions",
        "-R",
        type=int,
        default=config.DEFAULT_REPETITIONS,
        help="repetitions per system",
    )
    parser.add_argument(
        "--latency-runs",
        type=int,
        default=config.DEFAULT_LATENCY_RUNS,
        help="single runs for p50/p90",
    )
    parser.add_argument(
        "--only",
        default=DEFAULT_ONLY,
        help=f"comma-separated systems among: {known} (default: %(default)s)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile continuum workers (pyinstrument) and print top costs",
    )
    parser.add_argument("--timeout", type=float, default=config.DEFAULT_TIMEOUT, help="seconds per phase")
    config.add_server_arguments(parser, "the benchmark database")
    parser.add_argument(
        "--db-name",
        default=config.DEFAULT_DB_NAME,
        help="benchmark database (dropped and recreated)",
    )
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in all_systems()]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; known: {known}")
    for option in ("steps", "workflows", "concurrency", "repetitions"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1")
    return args


def measure(systems: Sequence[System], cfg: BenchConfig, logs: Path) -> list[Outcome]:
    """Every repetition of every system, or the reason one was skipped or failed.

    Repetitions are interleaved (round i of every system before round i + 1), so a
    machine that speeds up or slows down during the run weighs on every system alike
    and the ratios compare like with like.
    """
    outcomes = {system.name: Outcome(system.name, system.label) for system in systems}
    active: list[System] = []
    for system in systems:
        outcome = outcomes[system.name]
        reason = system.unavailable()
        if reason:
            outcome.skipped = reason
            print(f"{system.label}: skipped ({reason})", flush=True)
            continue
        try:
            system.prepare(cfg, logs)
            active.append(system)
        except BenchError as exc:
            _fail(system, outcome, exc)
    for i in range(cfg.repetitions):
        for system in list(active):
            outcome = outcomes[system.name]
            try:
                rep = run_repetition(system, cfg, logs)
            except BenchError as exc:
                _fail(system, outcome, exc)
                active.remove(system)
                continue
            outcome.repetitions.append(rep)
            p50 = "-" if rep.p50_ms is None else f"{rep.p50_ms:.1f} ms"
            print(
                f"{system.label}: repetition {i + 1}/{cfg.repetitions}: {rep.steps_per_s:.1f} steps/s, p50 {p50}",
                flush=True,
            )
    return [outcomes[system.name] for system in systems]


def _fail(system: System, outcome: Outcome, exc: BenchError) -> None:
    outcome.failed = str(exc)
    print(f"{system.label}: failed ({exc})", flush=True)


def profile_continuum(system: System, cfg: BenchConfig, logs: Path) -> tuple[str, bool]:
    """One extra, unmeasured throughput phase with the continuum workers profiled.

    Returns the printable top costs (or why there are none) and whether the phase failed.
    """
    reason = system.unavailable()
    if reason:
        return f"profile: skipped (continuum: {reason})", False
    try:
        import pyinstrument  # noqa: F401

        from bench.profiling import top_costs
    except ImportError as exc:
        return f"profile: skipped ({exc}; pip install -e '.[bench]')", False
    profile_dir = logs / "profile"
    profile_dir.mkdir(exist_ok=True)
    try:
        flush_redis(cfg)
        with system.workers(cfg, logs, **{config.ENV_PROFILE_DIR: str(profile_dir)}) as workers:
            system.throughput(cfg, workers, logs)
    except BenchError as exc:
        return f"profile: failed ({exc})", True
    return top_costs(profile_dir), False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code (1 if a system failed)."""
    args = parse_args(argv)
    cfg = BenchConfig(
        steps=args.steps,
        workflows=args.workflows,
        concurrency=args.concurrency,
        repetitions=args.repetitions,
        latency_runs=args.latency_runs,
        timeout=args.timeout,
        pg_admin_url=args.pg_admin_url,
        db_name=args.db_name,
        redis_url=args.redis_url,
    )
    systems = all_systems()
    print(render_header(cfg, os.cpu_count(), os.getloadavg()[0]), flush=True)
    try:
        flush_redis(cfg)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ensure_fresh_database(cfg)
    logs = Path(tempfile.mkdtemp(prefix="continuum-bench-"))

    outcomes = measure([systems[name] for name in args.only], cfg, logs)
    print()
    print(render_table(outcomes))
    print(FOOTNOTE)
    print()
    print(render_ratios(outcomes))
    profile_failed = False
    if args.profile:
        text, profile_failed = profile_continuum(systems["continuum"], cfg, logs)
        print()
        print(text)

    failed = any(o.failed for o in outcomes)
    if failed or profile_failed:
        print(f"\nworker and driver logs: {logs}", file=sys.stderr)
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
