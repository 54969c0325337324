"""One orchestrator per benchmarked system: prepare, start workers, run a phase.

Celery and continuum-celery share one shape: ``celery worker`` processes with
the same flags, and a driver subprocess that submits runs through the
broker. DBOS runs inside its own worker processes, which the harness commands
over a pipe (see ``bench.dbos_flow``). In the ``queued`` workload every system
gets a second pool of the same size, which alone serves the activities' queue.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import ACTS_QUEUE, BenchConfig
from bench.measure import delta, redis_counters
from bench.procs import BenchError, run_driver, spawn, stop, tail, wait_celery_ready

READY_DEADLINE_S = 90.0


@dataclass(frozen=True)
class PhaseResult:
    """Wall time of a throughput phase, the Redis commands issued meanwhile, the driver's CPU."""

    elapsed: float
    redis_calls: float
    driver_cpu_ms: float = 0.0


@dataclass
class Workers:
    """The worker processes of one lifetime: their session ids, and what the system drives them by."""

    sessions: list[int] = field(default_factory=list)
    pipes: list[_DbosProcess] = field(default_factory=list)


class System(ABC):
    """A system under test."""

    name: str
    label: str

    def unavailable(self) -> str | None:
        """Why the system cannot run here, or None when it can."""
        return None

    def unsupported(self, workload: str) -> str | None:
        """Why the system has no form of ``workload``, or None when it has one."""
        return None

    def label_for(self, workload: str) -> str:
        """The system's name in ``workload``'s table."""
        return self.label

    def prepare(self, cfg: BenchConfig, logs: Path) -> None:
        """Create what the system needs in the (fresh) benchmark database."""
        run_driver(
            [self.name, "prepare"],
            env=cfg.subprocess_env(),
            timeout=cfg.timeout,
            log_path=logs / f"{self.name}-driver.log",
        )

    @abstractmethod
    def workers(self, cfg: BenchConfig, logs: Path, **env: str) -> contextlib.AbstractContextManager[Workers]:
        """Start the worker processes, yield once they are ready, stop them on exit."""

    @abstractmethod
    def throughput(self, cfg: BenchConfig, workers: Workers, logs: Path, batch: int = 0) -> PhaseResult:
        """Run W workflows at once (or ``batch`` at a time) and time them."""

    @abstractmethod
    def latency(self, cfg: BenchConfig, workers: Workers, logs: Path) -> list[float]:
        """Run single workflows one at a time; milliseconds of each."""


class CeleryWorkerSystem(System):
    """A system whose work runs in ``celery worker`` processes, driven through the broker."""

    def __init__(
        self,
        name: str,
        label: str,
        app_module: str,
        *,
        queue: str | None,
        beat: bool,
        workloads: tuple[str, ...] | None = None,
        labels: Mapping[str, str] | None = None,
    ):
        self.name = name
        self.label = label
        self.app_module = app_module
        self.queue = queue
        self.beat = beat
        self.workloads = workloads
        self.labels = dict(labels or {})

    def unsupported(self, workload: str) -> str | None:
        if self.workloads is not None and workload not in self.workloads:
            return f"{self.label} has only {', '.join(self.workloads)}"
        return None

    def label_for(self, workload: str) -> str:
        return self.labels.get(workload, self.label)

    def worker_argv(self, cfg: BenchConfig, logs: Path, *, acts: bool = False) -> list[str]:
        """The ``celery worker`` command line; identical flags for every Celery-based system.

        ``acts``: the second pool of the ``queued`` workload, which consumes only the activities' queue.
        """
        node = f"{self.name}-acts" if acts else self.name
        argv = [
            sys.executable, "-m", "celery", "-A", self.app_module, "worker",
            "--concurrency", str(cfg.concurrency), "--pool", "prefork",
            "--loglevel", "WARNING", "-n", f"bench-{node}@%h",
            # Gossip, mingle and heartbeats only add broker chatter on a one-node cluster.
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        if acts:
            return [*argv, "-Q", ACTS_QUEUE]
        if self.queue:
            argv += ["-Q", self.queue]
        if self.beat:
            argv += ["-B", "-s", str(logs / f"{self.name}-beat-schedule")]
        return argv

    @contextlib.contextmanager
    def workers(self, cfg: BenchConfig, logs: Path, **env: str) -> Iterator[Workers]:
        log_path = logs / f"{self.name}-worker.log"
        argvs = [self.worker_argv(cfg, logs)]
        if cfg.workload == "queued":
            argvs.append(self.worker_argv(cfg, logs, acts=True))
        procs: list[subprocess.Popen[str]] = []
        try:
            for argv in argvs:
                procs.append(spawn(argv, env=cfg.subprocess_env(**env), log_path=log_path))
            wait_celery_ready(cfg.redis_url, procs, log_path, READY_DEADLINE_S)
            # start_new_session: each worker leads a session its prefork children and beat join.
            yield Workers(sessions=[proc.pid for proc in procs])
            if any(proc.poll() is not None for proc in procs):
                raise BenchError(f"worker died during the phase:\n{tail(log_path)}")
        finally:
            for proc in procs:
                stop(proc)

    def throughput(self, cfg: BenchConfig, workers: Workers, logs: Path, batch: int = 0) -> PhaseResult:
        result = self._drive(cfg, logs, "throughput", "--workflows", str(cfg.workflows), "--batch", str(batch))
        return PhaseResult(elapsed=result["elapsed"], redis_calls=result["redis_calls"], driver_cpu_ms=result["cpu_ms"])

    def latency(self, cfg: BenchConfig, workers: Workers, logs: Path) -> list[float]:
        result = self._drive(cfg, logs, "latency", "--runs", str(cfg.latency_runs))
        return [float(v) for v in result["latencies_ms"]]

    def _drive(self, cfg: BenchConfig, logs: Path, action: str, *extra: str) -> dict[str, Any]:
        args = [self.name, action, "--workload", cfg.workload, "--steps", str(cfg.steps)]
        args += ["--timeout", str(cfg.timeout), *extra]
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
    def workers(self, cfg: BenchConfig, logs: Path, **env: str) -> Iterator[Workers]:
        argv = [sys.executable, "-m", "bench.drive", "dbos", "serve"]
        roles = [argv]
        if cfg.workload == "queued":
            # The first pool runs the workflows and dequeues nothing; the second only the steps' queue.
            roles = [[*argv, "--listen", ""], [*argv, "--listen", ACTS_QUEUE]]
        log_path = logs / "dbos-worker.log"
        procs: list[_DbosProcess] = []
        try:
            for role in roles:
                for _ in range(cfg.concurrency):
                    proc = spawn(role, env=cfg.subprocess_env(**env), log_path=log_path, stdio_pipes=True)
                    procs.append(_DbosProcess(proc, log_path))
                    procs[-1].start_reader()
            deadline = time.monotonic() + READY_DEADLINE_S
            for p in procs:
                p.expect("ready", deadline)
            yield Workers(sessions=[p.proc.pid for p in procs], pipes=procs[: cfg.concurrency])
        finally:
            for p in procs:
                with contextlib.suppress(OSError):
                    p.send("quit")
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.wait(timeout=30.0)
                stop(p.proc)

    def throughput(self, cfg: BenchConfig, workers: Workers, logs: Path, batch: int = 0) -> PhaseResult:
        procs = workers.pipes
        batch = batch or cfg.workflows
        redis_before = redis_counters(cfg.redis_url)
        t0 = time.perf_counter()
        deadline = time.monotonic() + cfg.timeout
        for first in range(0, cfg.workflows, batch):
            count = min(batch, cfg.workflows - first)
            shares = [count // len(procs)] * len(procs)
            for i in range(count % len(procs)):
                shares[i] += 1
            for p, share in zip(procs, shares, strict=True):
                p.send(f"throughput {cfg.workload} {share} {cfg.steps}")
            for p in procs:
                p.expect("done", deadline)
        elapsed = time.perf_counter() - t0
        redis_after = redis_counters(cfg.redis_url)
        return PhaseResult(elapsed, sum(delta(redis_before, redis_after).values()))

    def latency(self, cfg: BenchConfig, workers: Workers, logs: Path) -> list[float]:
        first = workers.pipes[0]
        first.send(f"latency {cfg.workload} {cfg.latency_runs} {cfg.steps}")
        return [float(v) for v in first.expect("latency", time.monotonic() + cfg.timeout)]


def all_systems() -> dict[str, System]:
    """Every system the harness knows, by its ``--only`` name."""
    systems: list[System] = [
        CeleryWorkerSystem(
            "celery",
            "Celery chain",
            "bench.celery_chain",
            queue="bench.celery",
            beat=False,
            labels={"queued": "Celery chain (routed)", "fanout": "Celery chord", "timers": "Celery countdown"},
        ),
        CeleryWorkerSystem(
            "celery-commit",
            "Celery+commit",
            "bench.celery_chain",
            queue="bench.celery",
            beat=False,
            workloads=("sequential",),
        ),
        ContinuumSystem(),
        DbosSystem(),
    ]
    return {s.name: s for s in systems}
