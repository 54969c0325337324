"""One orchestrator per benchmarked system: prepare, start workers, run a phase.

Celery and continuum-celery share one shape: ``celery worker`` processes with
the same flags, and a driver subprocess that submits runs through the
broker. DBOS runs inside its own worker processes, which the harness commands
over a pipe (see ``bench.dbos_flow``).
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import BenchConfig
from bench.measure import delta, redis_counters
from bench.procs import BenchError, run_driver, spawn, stop, tail, wait_celery_ready

READY_DEADLINE_S = 90.0


@dataclass(frozen=True)
class PhaseResult:
    """Wall time of a throughput phase and the Redis commands issued meanwhile."""

    elapsed: float
    redis_calls: float


class System(ABC):
    """A system under test."""

    name: str
    label: str

    def unavailable(self) -> str | None:
        """Why the system cannot run here, or None when it can."""
        return None

    def prepare(self, cfg: BenchConfig, logs: Path) -> None:
        """Create what the system needs in the (fresh) benchmark database."""
        run_driver(
            [self.name, "prepare"],
            env=cfg.subprocess_env(),
            timeout=cfg.timeout,
            log_path=logs / f"{self.name}-driver.log",
        )

    @abstractmethod
    def workers(self, cfg: BenchConfig, logs: Path, **env: str) -> contextlib.AbstractContextManager[Any]:
        """Start the worker processes, yield once they are ready, stop them on exit."""

    @abstractmethod
    def throughput(self, cfg: BenchConfig, workers: Any, logs: Path) -> PhaseResult:
        """Run W workflows at once and time them."""

    @abstractmethod
    def latency(self, cfg: BenchConfig, workers: Any, logs: Path) -> list[float]:
        """Run single workflows one at a time; milliseconds of each."""


class CeleryWorkerSystem(System):
    """A system whose work runs in ``celery worker`` processes, driven through the broker."""

    def __init__(self, name: str, label: str, app_module: str, *, queue: str | None, beat: bool):
        self.name = name
        self.label = label
        self.app_module = app_module
        self.queue = queue
        self.beat = beat

    def worker_argv(self, cfg: BenchConfig, logs: Path) -> list[str]:
        """The ``celery worker`` command line; identical flags for every Celery-based system."""
        argv = [
            sys.executable, "-m", "celery", "-A", self.app_module, "worker",
            "--concurrency", str(cfg.concurrency), "--pool", "prefork",
            "--loglevel", "WARNING", "-n", f"bench-{self.name}@%h",
            # Gossip, mingle and heartbeats only add broker chatter on a one-node cluster.
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        if self.queue:
            argv += ["-Q", self.queue]
        if self.beat:
            argv += ["-B", "-s", str(logs / f"{self.name}-beat-schedule")]
        return argv

    @contextlib.contextmanager
    def workers(self, cfg: BenchConfig, logs: Path, **env: str) -> Iterator[None]:
        log_path = logs / f"{self.name}-worker.log"
        proc = spawn(self.worker_argv(cfg, logs), env=cfg.subprocess_env(**env), log_path=log_path)
        try:
            wait_celery_ready(cfg.redis_url, [proc], log_path, READY_DEADLINE_S)
            yield None
            if proc.poll() is not None:
                raise BenchError(f"worker died during the phase:\n{tail(log_path)}")
        finally:
            stop(proc)

    def throughput(self, cfg: BenchConfig, workers: Any, logs: Path) -> PhaseResult:
        result = self._drive(cfg, logs, "throughput", "--workflows", str(cfg.workflows))
        return PhaseResult(elapsed=result["elapsed"], redis_calls=result["redis_calls"])

    def latency(self, cfg: BenchConfig, workers: Any, logs: Path) -> list[float]:
        result = self._drive(cfg, logs, "latency", "--runs", str(cfg.latency_runs))
        return [float(v) for v in result["latencies_ms"]]

    def _drive(self, cfg: BenchConfig, logs: Path, action: str, *extra: str) -> dict[str, Any]:
        args = [self.name, action, "--steps", str(cfg.steps), "--timeout", str(cfg.timeout), *extra]
        return run_driver(
            args,
            env=cfg.subprocess_env(),
            timeout=cfg.timeout + 60.0,
            log_path=logs / f"{self.name}-driver.log",
        )


class ContinuumSystem(CeleryWorkerSystem):
    """continuum-celery, skipped with a reason while its public API cannot be imported."""

    def __init__(self) -> None:
        # No -Q: the engine declares and routes its own queues.
        super().__init__("continuum", "continuum", "bench.continuum_flow", queue=None, beat=True)

    def unavailable(self) -> str | None:
        try:
            from continuum_celery import Continuum, activity, workflow  # noqa: F401
            from continuum_celery.journal.schema import migrate  # noqa: F401
        except Exception as exc:  # any import-time failure means the engine is not usable
            return f"engine not importable: {type(exc).__name__}: {exc}"
        return None


@dataclass
class _DbosProcess:
    proc: subprocess.Popen[str]
    log_path: Path
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def start_reader(self) -> None:
        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.put(line.strip())
            self.lines.put(None)

        threading.Thread(target=read, daemon=True).start()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str, deadline: float) -> list[str]:
        try:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty:
            raise BenchError(f"DBOS process gave no {word!r} in time:\n{tail(self.log_path)}") from None
        if line is None:
            raise BenchError(f"DBOS process exited:\n{tail(self.log_path)}")
        head, *rest = line.split()
        if head != word:
            raise BenchError(f"DBOS process answered {line!r}, expected {word!r}")
        return rest


class DbosSystem(System):
    """DBOS Transact, skipped with a reason when ``dbos`` cannot be imported."""

    name = "dbos"
    label = "DBOS"

    def unavailable(self) -> str | None:
        try:
            import dbos  # noqa: F401
        except Exception as exc:
            return f"dbos not importable: {type(exc).__name__}: {exc}; pip install -e '.[bench]'"
        return None

    @contextlib.contextmanager
    def workers(self, cfg: BenchConfig, logs: Path, **env: str) -> Iterator[list[_DbosProcess]]:
        argv = [sys.executable, "-m", "bench.drive", "dbos", "serve"]
        log_path = logs / "dbos-worker.log"
        procs = []
        try:
            for _ in range(cfg.concurrency):
                proc = spawn(argv, env=cfg.subprocess_env(**env), log_path=log_path, stdio_pipes=True)
                procs.append(_DbosProcess(proc, log_path))
                procs[-1].start_reader()
            deadline = time.monotonic() + READY_DEADLINE_S
            for p in procs:
                p.expect("ready", deadline)
            yield procs
        finally:
            for p in procs:
                with contextlib.suppress(OSError):
                    p.send("quit")
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.wait(timeout=30.0)
                stop(p.proc)

    def throughput(self, cfg: BenchConfig, workers: Any, logs: Path) -> PhaseResult:
        procs: list[_DbosProcess] = workers
        shares = [cfg.workflows // len(procs)] * len(procs)
        for i in range(cfg.workflows % len(procs)):
            shares[i] += 1
        redis_before = redis_counters(cfg.redis_url)
        t0 = time.perf_counter()
        for p, share in zip(procs, shares, strict=True):
            p.send(f"throughput {share} {cfg.steps}")
        deadline = time.monotonic() + cfg.timeout
        for p in procs:
            p.expect("done", deadline)
        elapsed = time.perf_counter() - t0
        redis_after = redis_counters(cfg.redis_url)
        return PhaseResult(elapsed, sum(delta(redis_before, redis_after).values()))

    def latency(self, cfg: BenchConfig, workers: Any, logs: Path) -> list[float]:
        first: _DbosProcess = workers[0]
        first.send(f"latency {cfg.latency_runs} {cfg.steps}")
        return [float(v) for v in first.expect("latency", time.monotonic() + cfg.timeout)]


def all_systems() -> dict[str, System]:
    """Every system the harness knows, by its ``--only`` name."""
    systems: list[System] = [
        CeleryWorkerSystem("celery", "Celery chain", "bench.celery_chain", queue="bench.celery", beat=False),
        CeleryWorkerSystem("celery-commit", "Celery+commit", "bench.celery_chain", queue="bench.celery", beat=False),
        ContinuumSystem(),
        DbosSystem(),
    ]
    return {s.name: s for s in systems}
