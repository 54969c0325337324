"""Small helpers the scenarios share: a phase clock for the log, and a stand-in process supervisor."""

from __future__ import annotations

import time

from tests.support.stack import Proc, Stack, wait_until


class Phases:
    """Prints how long each phase of a scenario took (shown with ``pytest -s``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.began = time.monotonic()
        self.timeline: list[tuple[str, float]] = []

    def __call__(self, label: str) -> None:
        at = round(time.monotonic() - self.began, 1)
        self.timeline.append((label, at))
        print(f"[{self.name} +{at}s] {label}", flush=True)


def start_workers(stack: Stack, *names: str) -> list[Proc]:
    """Start one worker per name, all at once, and wait until every one has booted."""
    procs = [stack.worker(name, wait=False) for name in names]

    def booted() -> bool:
        exited = [p for p in procs if p.popen.poll() is not None]
        assert not exited, f"worker {exited[0].name} exited at boot:\n{exited[0].output()[-3000:]}"
        return all("ready." in p.output() for p in procs)

    wait_until(booted, 90, f"workers {', '.join(names)} to boot", interval=0.1)
    return procs


def signal_all(stack: Stack, run_ids: list[str], payload: object) -> None:
    """Send the signal ``go`` with ``payload`` to each run."""
    for run_id in run_ids:
        stack.client().client.get(run_id).signal("go", payload)


def open_runs(stack: Stack, run_ids: list[str]) -> int:
    """How many of ``run_ids`` have not ended (completed or failed) yet."""
    return stack.sql(
        "SELECT count(*) AS n FROM continuum_runs WHERE id = ANY(:ids) AND state NOT IN ('completed', 'failed')",
        ids=run_ids,
    )[0].n


def replace_dead_workers(stack: Stack, workers: list[Proc]) -> int:
    """Start a new worker in place of each one that exited (what systemd or Kubernetes would do).

    Returns how many had died.
    """
    dead = 0
    for i, proc in enumerate(workers):
        if proc.popen.poll() is not None:
            dead += 1
            workers[i] = stack.worker(f"{proc.name}-again", wait=False)
    return dead
