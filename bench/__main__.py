"""``python -m bench``: measure every selected system in every selected workload; print tables and ratios.

Example::

    python -m bench --steps 10 --workflows 200 --concurrency 2 --repetitions 3
    python -m bench --only celery,dbos --workloads sequential,fanout --workflows 50 --repetitions 1
    python -m bench --rss            # continuum worker RSS after 1,000 and after 10,000 runs
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import config
from bench.config import BenchConfig
from bench.procs import BenchError
from bench.report import (
    FOOTNOTE,
    Outcome,
    render_header,
    render_ratios,
    render_table,
    render_workload_title,
)
from bench.rss import DEFAULT_CHECKPOINTS, measure_rss, parse_checkpoints, render_rss, render_rss_header
from bench.runner import ensure_fresh_database, flush_redis, run_repetition
from bench.systems import System, all_systems
from bench.workloads import WORKLOADS, parse_workloads

DEFAULT_ONLY = "celery,continuum,dbos"
#: What ``--rss`` measures unless ``--workloads`` says otherwise.
DEFAULT_RSS_WORKLOAD = "sequential"


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
        "--workloads",
        default=None,
        help=f"comma-separated workloads among: {', '.join(WORKLOADS)} (default: all; with --rss: "
        f"{DEFAULT_RSS_WORKLOAD})",
    )
    parser.add_argument(
        "--rss",
        action="store_true",
        help="instead of the comparison: continuum worker RSS after each of --rss-runs runs, in one worker lifetime",
    )
    parser.add_argument(
        "--rss-runs",
        default=",".join(str(n) for n in DEFAULT_CHECKPOINTS),
        help="with --rss: the run counts at which RSS is read (default: %(default)s)",
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
    default_workloads = DEFAULT_RSS_WORKLOAD if args.rss else ",".join(WORKLOADS)
    try:
        args.workloads = parse_workloads(args.workloads or default_workloads)
        args.rss_runs = parse_checkpoints(args.rss_runs)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def prepare(systems: Sequence[System], cfg: BenchConfig, logs: Path) -> dict[str, str]:
    """Prepare every available system once; returns why each of the others is skipped."""
    skipped: dict[str, str] = {}
    for system in systems:
        reason = system.unavailable()
        if reason is None:
            try:
                system.prepare(cfg, logs)
            except BenchError as exc:
                reason = f"could not be prepared: {exc}"
        if reason:
            skipped[system.name] = reason
            print(f"{system.label}: skipped ({reason})", flush=True)
    return skipped


def measure(systems: Sequence[System], cfg: BenchConfig, logs: Path, skipped: dict[str, str]) -> list[Outcome]:
    """Every repetition of every system in ``cfg.workload``, or the reason one was skipped or failed.

    Repetitions are interleaved (round i of every system before round i + 1), so a
    machine that speeds up or slows down during the run weighs on every system alike
    and the ratios compare like with like.
    """
    outcomes = {s.name: Outcome(s.name, s.label_for(cfg.workload)) for s in systems}
    active: list[System] = []
    for system in systems:
        reason = skipped.get(system.name) or system.unsupported(cfg.workload)
        if reason:
            outcomes[system.name].skipped = reason
            if system.name not in skipped:
                print(f"{outcomes[system.name].label}: n/a in {cfg.workload} ({reason})", flush=True)
        else:
            active.append(system)
    for i in range(cfg.repetitions):
        for system in list(active):
            outcome = outcomes[system.name]
            try:
                rep = run_repetition(system, cfg, logs)
            except BenchError as exc:
                outcome.failed = str(exc)
                print(f"{outcome.label}: failed in {cfg.workload} ({exc})", flush=True)
                active.remove(system)
                continue
            outcome.repetitions.append(rep)
            p50 = "-" if rep.p50_ms is None else f"{rep.p50_ms:.1f} ms"
            cpu = "-" if rep.cpu_ms_per_step is None else f"{rep.cpu_ms_per_step:.2f}"
            print(
                f"{outcome.label} [{cfg.workload}]: repetition {i + 1}/{cfg.repetitions}: "
                f"{rep.steps_per_s:.1f} steps/s, p50 {p50}, CPU {cpu} ms/step",
                flush=True,
            )
    return [outcomes[system.name] for system in systems]


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


def compare(args: argparse.Namespace, cfg: BenchConfig, logs: Path) -> bool:
    """The comparison: a table and ratio lines per workload. Returns whether something failed."""
    systems = all_systems()
    selected = [systems[name] for name in args.only]
    skipped = prepare(selected, cfg, logs)
    failed = False
    for name in args.workloads:
        workload_cfg = dataclasses.replace(cfg, workload=name)
        print(f"\n{render_workload_title(WORKLOADS[name])}", flush=True)
        outcomes = measure(selected, workload_cfg, logs, skipped)
        failed = failed or any(o.failed for o in outcomes)
        print()
        print(render_table(outcomes))
        print()
        print(render_ratios(outcomes, WORKLOADS[name]), flush=True)
    print()
    print(FOOTNOTE)
    if args.profile:
        text, profile_failed = profile_continuum(systems["continuum"], cfg, logs)
        print()
        print(text)
        failed = failed or profile_failed
    return failed


def rss(args: argparse.Namespace, cfg: BenchConfig, logs: Path) -> bool:
    """``--rss``: continuum worker RSS at each checkpoint, per workload. Returns whether something failed."""
    system = all_systems()["continuum"]
    if prepare([system], cfg, logs):
        return True
    failed = False
    for name in args.workloads:
        label = f"continuum [{name}]"
        try:
            flush_redis(cfg)
            readings = measure_rss(system, dataclasses.replace(cfg, workload=name), logs, args.rss_runs)
        except BenchError as exc:
            print(f"{label}: failed ({exc})", flush=True)
            failed = True
            continue
        print(render_rss(readings, label), flush=True)
    return failed


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
    load = os.getloadavg()[0]
    if args.rss:
        print(render_rss_header(cfg, args.rss_runs, os.cpu_count(), load), flush=True)
    else:
        print(render_header(cfg, os.cpu_count(), load), flush=True)
    try:
        flush_redis(cfg)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ensure_fresh_database(cfg)
    logs = Path(tempfile.mkdtemp(prefix="continuum-bench-"))

    failed = rss(args, cfg, logs) if args.rss else compare(args, cfg, logs)
    print(f"\nload average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if failed:
        print(f"\nworker and driver logs: {logs}", file=sys.stderr)
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
