"""CPU time a system spends during a throughput phase, from /proc and Redis.

Four parts, each in milliseconds (``python -m bench`` divides them by the steps):

- workers: every process in the sessions of the worker processes the harness
  started (Celery's main process, its prefork children and embedded beat; the
  DBOS processes). A thread of the harness samples them every
  ``SAMPLE_INTERVAL_S``, so a process that starts during the phase counts from
  zero and one that ends counts up to its last sample. Only a process's own
  user + system time is summed: the time of reaped children (cutime) would count
  a child a second time through its parent.
- driver: the submitting process reports its own CPU over the phase
  (``RUSAGE_SELF``), its imports and connection set-up left out.
- PostgreSQL: the backends connected to the benchmark database (as
  ``pg_stat_activity`` names them) and the server's own processes (postmaster,
  WAL writer, checkpointer, ...), which serve every database: server-wide.
  Backends of other databases are left out. Needs the server on this machine.
- Redis: ``used_cpu_*`` of ``INFO cpu``, main thread and children: server-wide.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import redis_info

SAMPLE_INTERVAL_S = 0.2
PROC = Path("/proc")
REDIS_CPU_FIELDS = ("used_cpu_user", "used_cpu_sys", "used_cpu_user_children", "used_cpu_sys_children")

#: (pid, start time): a pid alone may be reused by another process during a phase.
ProcessKey = tuple[int, int]


def clock_ticks() -> int:
    """Ticks per second of the times in /proc/<pid>/stat."""
    return int(os.sysconf("SC_CLK_TCK"))


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the accounting reads."""

    pid: int
    ppid: int
    session: int
    ticks: int
    start: int

    @property
    def key(self) -> ProcessKey:
        return (self.pid, self.start)


def parse_stat(text: str) -> ProcStat:
    """Parse one /proc/<pid>/stat line (see proc(5)); ``ticks`` is utime + stime.

    The command name (field 2) sits in parentheses and may itself hold spaces and
    parentheses, so the fields after it are counted from its last ``)``.

    Raises:
        ValueError: the line is not in that format.
    """
    head, sep, tail = text.rpartition(")")
    if not sep or "(" not in head:
        raise ValueError(f"not a /proc stat line: {text[:80]!r}")
    pid = int(head.split("(", 1)[0])
    fields = tail.split()
    # fields[0] is field 3 (state): field n of proc(5) is fields[n - 3].
    if len(fields) < 20:
        raise ValueError(f"/proc stat line with {len(fields) + 2} fields: {text[:80]!r}")
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        session=int(fields[3]),
        ticks=int(fields[11]) + int(fields[12]),
        start=int(fields[19]),
    )


def scan_processes(proc: Path = PROC) -> Iterator[ProcStat]:
    """Every process of this machine that can be read now (one may end while it is read)."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            yield parse_stat((entry / "stat").read_text())
        except (OSError, ValueError):
            continue


class Ledger:
    """CPU ticks of a set of processes since a baseline.

    A process seen in the baseline counts from its ticks then; one first seen
    later was born during the phase and counts from zero.
    """

    def __init__(self) -> None:
        self._first: dict[ProcessKey, int] = {}
        self._last: dict[ProcessKey, int] = {}

    def observe(self, key: ProcessKey, ticks: int, *, baseline: bool) -> None:
        """Record one sample of the process ``key``."""
        if key not in self._first:
            self._first[key] = ticks if baseline else 0
        self._last[key] = ticks

    def ticks(self) -> int:
        """Ticks spent since the baseline by every process observed."""
        return sum(last - self._first[key] for key, last in self._last.items())

    def processes(self) -> int:
        """How many processes were observed."""
        return len(self._last)


def ticks_to_ms(ticks: float, hz: int) -> float:
    """Clock ticks to milliseconds."""
    return ticks * 1000.0 / hz


def pg_role(datname: str | None, backend_type: str, db_name: str) -> str | None:
    """How a PostgreSQL process counts: ``"ours"``, ``"server"`` or None (another database's).

    ``datname``/``backend_type`` as ``pg_stat_activity`` shows them: background
    processes have no database and serve the whole server.
    """
    if datname == db_name:
        return "ours"
    if datname is None and backend_type != "client backend":
        return "server"
    return None


def redis_cpu_s(info: Mapping[str, Any]) -> float:
    """Seconds of CPU of the Redis server (main thread, threads and forked children), from ``INFO cpu``."""
    return sum(float(info.get(name, 0.0)) for name in REDIS_CPU_FIELDS)


def redis_cpu(redis_url: str) -> float:
    """``redis_cpu_s`` of the server at ``redis_url`` now."""
    return redis_cpu_s(redis_info(redis_url, "cpu"))


def local_postmaster(admin_url: str) -> int | None:
    """Pid of the PostgreSQL postmaster if it runs on this machine (its backends are in /proc), else None."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        if row is None:
            return None
        try:
            # The backend serving this very connection is a child of the postmaster.
            return parse_stat((PROC / str(row[0]) / "stat").read_text()).ppid
        except (OSError, ValueError):
            return None


class CpuSampler:
    """Samples the CPU of worker sessions and of PostgreSQL processes while a phase runs.

    Use as a context manager around the phase: entering takes the baseline,
    leaving takes the last sample; ``workers_ms`` and ``pg_ms`` are then final.
    """

    def __init__(
        self,
        sessions: Collection[int],
        *,
        postmaster: int | None,
        admin_url: str,
        db_name: str,
        interval: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self._sessions = frozenset(sessions)
        self._postmaster = postmaster
        self._admin_url = admin_url
        self._db_name = db_name
        self._interval = interval
        self._hz = clock_ticks()
        self._workers = Ledger()
        self._pg = Ledger()
        self._roles: dict[ProcessKey, str | None] = {}
        # Ticks at the baseline of PostgreSQL processes not classified by then.
        self._unclassified_at_baseline: dict[ProcessKey, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    def __enter__(self) -> CpuSampler:
        if self._postmaster is not None:
            import psycopg

            self._conn = psycopg.connect(self._admin_url, autocommit=True)
        self._sample(baseline=True)
        self._thread = threading.Thread(target=self._run, name="bench-cpu-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._sample(baseline=False)
        finally:
            if self._conn is not None:
                self._conn.close()

    @property
    def workers_ms(self) -> float:
        """CPU of the worker sessions' processes since the baseline."""
        return ticks_to_ms(self._workers.ticks(), self._hz)

    @property
    def pg_ms(self) -> float | None:
        """CPU of the benchmark database's backends and the server's own processes; None if not local."""
        if self._postmaster is None:
            return None
        return ticks_to_ms(self._pg.ticks(), self._hz)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample(baseline=False)

    def _sample(self, *, baseline: bool) -> None:
        unclassified: list[ProcStat] = []
        for stat in scan_processes():
            if stat.session in self._sessions:
                self._workers.observe(stat.key, stat.ticks, baseline=baseline)
            elif stat.pid == self._postmaster:
                self._pg.observe(stat.key, stat.ticks, baseline=baseline)
            elif stat.ppid == self._postmaster and self._postmaster is not None:
                if stat.key not in self._roles:
                    unclassified.append(stat)
                elif self._roles[stat.key] is not None:
                    self._pg.observe(stat.key, stat.ticks, baseline=baseline)
        if unclassified:
            if baseline:
                self._unclassified_at_baseline.update((s.key, s.ticks) for s in unclassified)
            self._classify(unclassified, baseline=baseline)

    def _classify(self, stats: list[ProcStat], *, baseline: bool) -> None:
        rows = self._conn.execute(
            "SELECT pid, datname, backend_type FROM pg_stat_activity WHERE pid = ANY(%s)",
            ([s.pid for s in stats],),
        ).fetchall()
        found = {pid: pg_role(datname, backend_type, self._db_name) for pid, datname, backend_type in rows}
        for stat in stats:
            # A process just forked is not in pg_stat_activity yet: look again at the next sample.
            if stat.pid not in found:
                continue
            self._roles[stat.key] = found[stat.pid]
            if found[stat.pid] is None:
                continue
            if stat.key in self._unclassified_at_baseline:
                self._pg.observe(stat.key, self._unclassified_at_baseline.pop(stat.key), baseline=True)
            self._pg.observe(stat.key, stat.ticks, baseline=baseline)


@dataclass(frozen=True)
class CpuSplit:
    """CPU milliseconds of one phase (or per step), by where they were spent."""

    workers_ms: float
    pg_ms: float | None
    redis_ms: float | None

    @property
    def total_ms(self) -> float | None:
        """Everything, or None when a part could not be measured."""
        if self.pg_ms is None or self.redis_ms is None:
            return None
        return self.workers_ms + self.pg_ms + self.redis_ms

    def per_step(self, steps: int) -> CpuSplit:
        """The same split divided by ``steps``.

        Raises:
            ValueError: ``steps`` is not positive.
        """
        if steps <= 0:
            raise ValueError(f"steps must be positive, got {steps}")
        return CpuSplit(
            workers_ms=self.workers_ms / steps,
            pg_ms=None if self.pg_ms is None else self.pg_ms / steps,
            redis_ms=None if self.redis_ms is None else self.redis_ms / steps,
        )
