"""Subprocesses: start them, wait until they are ready, stop them, read their output.

Every process is started in its own session so that stopping it also reaches
the children it forked (Celery's prefork pool, embedded beat) and nothing
outlives the harness.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from bench.config import ROOT

RESULT_PREFIX = "BENCH-RESULT "
STOP_GRACE_S = 30.0


class BenchError(RuntimeError):
    """A system could not be prepared, started or measured."""


def spawn(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    log_path: Path,
    stdio_pipes: bool = False,
) -> subprocess.Popen[str]:
    """Start ``argv`` in its own session, stderr (and stdout unless piped) to ``log_path``."""
    log: IO[str] = open(log_path, "a")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE if stdio_pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdio_pipes else log,
            stderr=log,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
    finally:
        log.close()


def stop(proc: subprocess.Popen[str], grace_s: float = STOP_GRACE_S) -> None:
    """Ask ``proc`` to stop (SIGTERM), wait, then kill what is left of its session."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    _kill_session(proc)
    proc.wait()


def _kill_session(proc: subprocess.Popen[str]) -> None:
    # The session id is the pid of the process we started (start_new_session).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file, or an empty string."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_driver(
    args: Sequence[str], *, env: dict[str, str], timeout: float, log_path: Path, module: str = "bench.drive"
) -> dict[str, Any]:
    """Run ``python -m MODULE ARGS`` (``bench.drive`` unless told) and return the JSON result it prints.

    Raises:
        BenchError: the driver failed, timed out, or printed no result.
    """
    argv = [sys.executable, "-m", module, *args]
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"driver {' '.join(args)} timed out after {timeout:.0f}s") from exc
    with open(log_path, "a") as log:
        log.write(done.stdout)
        log.write(done.stderr)
    if done.returncode != 0:
        last = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise BenchError(f"driver {' '.join(args)} exited with {done.returncode}:\n{last}")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    raise BenchError(f"driver {' '.join(args)} printed no result")


def emit_result(result: dict[str, Any]) -> None:
    """Print a driver's result where ``run_driver`` looks for it."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def wait_celery_ready(
    redis_url: str, procs: Sequence[subprocess.Popen[str]], log_path: Path, deadline_s: float
) -> None:
    """Ping through the broker until every worker node answers.

    Raises:
        BenchError: a worker exited, or not all answered before the deadline.
    """
    from celery import Celery

    control = Celery("bench-control", broker=redis_url)
    control.conf.broker_connection_retry_on_startup = True
    end = time.monotonic() + deadline_s
    try:
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    raise BenchError(f"worker exited with {proc.returncode} while starting:\n{tail(log_path)}")
            replies = control.control.ping(timeout=0.5) or []
            if len(replies) >= len(procs):
                return
            if time.monotonic() >= end:
                raise BenchError(
                    f"{len(replies)}/{len(procs)} workers answered ping within {deadline_s:.0f}s:\n{tail(log_path)}"
                )
    finally:
        control.close()
