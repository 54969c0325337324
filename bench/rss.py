"""``python -m bench --rss``: does a continuum worker pool's memory grow with the runs it serves?

One worker lifetime: run the workload's workflows (``--workflows`` in flight at
a time) up to the first checkpoint (1,000 runs by default), read the resident
set size of every process of the pool (the main process, its prefork children
and embedded beat; the second pool too in the ``queued`` workload), go on to
the last checkpoint (10,000 runs) and read again. The target: the last reading
within 10 % of the first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.config import BenchConfig
from bench.cpu import PROC, scan_processes
from bench.systems import System

DEFAULT_CHECKPOINTS = (1_000, 10_000)
#: Last reading / first reading must stay at or under this.
GROWTH_TARGET = 1.10


def parse_vmrss_kib(status: str) -> int | None:
    """The ``VmRSS`` of a /proc/<pid>/status text in KiB, or None (a zombie or kernel thread has none)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def sessions_rss_kib(sessions: Collection[int], proc: Path = PROC) -> dict[int, int]:
    """Resident KiB of every process in ``sessions``, by pid."""
    found: dict[int, int] = {}
    for stat in scan_processes(proc):
        if stat.session not in sessions:
            continue
        try:
            kib = parse_vmrss_kib((proc / str(stat.pid) / "status").read_text())
        except OSError:  # ended since the scan
            continue
        if kib is not None:
            found[stat.pid] = kib
    return found


@dataclass(frozen=True)
class Reading:
    """RSS of the pool after ``runs`` runs."""

    runs: int
    kib_by_pid: dict[int, int]

    @property
    def total_kib(self) -> int:
        return sum(self.kib_by_pid.values())


def parse_checkpoints(text: str) -> tuple[int, ...]:
    """``"1000,10000"`` -> ``(1000, 10000)``: increasing run counts, at least two.

    Raises:
        ValueError: fewer than two, not increasing, or not positive.
    """
    values = tuple(int(part) for part in text.split(",") if part.strip())
    if len(values) < 2 or values[0] <= 0 or any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"--rss-runs wants at least two increasing positive run counts, got {text!r}")
    return values


def measure_rss(system: System, cfg: BenchConfig, logs: Path, checkpoints: Sequence[int]) -> list[Reading]:
    """Run ``system``'s workload up to each checkpoint in one worker lifetime, reading RSS at each."""
    readings: list[Reading] = []
    with system.workers(cfg, logs) as workers:
        done = 0
        for target in checkpoints:
            system.throughput(dataclasses.replace(cfg, workflows=target - done), workers, logs, batch=cfg.workflows)
            done = target
            readings.append(Reading(done, sessions_rss_kib(workers.sessions)))
    return readings


def render_rss_header(cfg: BenchConfig, checkpoints: Sequence[int], cores: int | None, load: float) -> str:
    """The settings of an ``--rss`` measurement, in one line."""
    return (
        f"RSS of one continuum worker pool after {', '.join(f'{n:,}' for n in checkpoints)} runs: N={cfg.steps}"
        f" steps, {cfg.workflows} runs in flight, worker concurrency {cfg.concurrency}, {cores or '?'} cores,"
        f" load {load:.2f}, database {cfg.db_name}, Redis {cfg.redis_url}"
    )


def render_rss(readings: Sequence[Reading], label: str) -> str:
    """Each reading (total and per process) and the growth from the first to the last, against its target."""
    lines = []
    for reading in readings:
        each = ", ".join(f"{kib / 1024:.1f}" for _, kib in sorted(reading.kib_by_pid.items()))
        lines.append(
            f"{label}: RSS after {reading.runs:>6} runs: {reading.total_kib / 1024:7.1f} MiB"
            f" over {len(reading.kib_by_pid)} processes ({each} MiB)"
        )
    first, last = readings[0], readings[-1]
    if first.total_kib <= 0:
        lines.append(f"{label}: RSS growth n/a (no process read after {first.runs} runs)")
        return "\n".join(lines)
    growth = last.total_kib / first.total_kib
    verdict = "met" if growth <= GROWTH_TARGET else "NOT MET"
    lines.append(
        f"{label}: RSS after {last.runs} / after {first.runs} runs: {growth:.3f}x"
        f"   target <= {GROWTH_TARGET:.2f}x: {verdict}"
    )
    return "\n".join(lines)
