"""Flower, as operators run it, shows continuum's tasks readably and never their payloads."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest

from continuum_celery import WorkflowFailed, get_run
from tests.support.flows_ops import failing, quick
from tests.support.stack import Proc, Stack, wait_until

SECRET = "4111-1111-1111-1111"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _flower(stack: Stack) -> tuple[str, Proc]:
    """A Flower process on a free port, serving its API; returns its base URL."""
    port = _free_port()
    flower = stack._spawn(
        "flower",
        ["flower", f"--port={port}", "--address=127.0.0.1"],
        stack.env(FLOWER_UNAUTHENTICATED_API="true"),
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _get(f"{base}/api/tasks") is not None, 60, f"flower to serve:\n{flower.output()[-2000:]}")
    return base, flower


def test_flower_lists_the_continuum_tasks_of_a_finished_workflow_with_readable_args(stack: Stack) -> None:
    stack.modules = ("tests.support.flows_ops",)
    stack.client()
    base, _ = _flower(stack)
    # Activities as tasks of their own (inline ones would run inside their replay task, unseen by Flower).
    stack.worker(extra_args=("-E",), CONTINUUM_INLINE_ACTIVITIES="0")

    direct = quick.start({"label": "direct", "card": SECRET})
    assert direct.result(timeout=60) == {"first": "direct", "second": "two"}
    canvas_run = f"canvas-{stack.token}"
    quick.s({"label": "canvas", "card": SECRET}, run_id=canvas_run).delay()  # continuum.start through Celery

    wait_until(
        lambda: stack.sql("SELECT 1 FROM continuum_runs WHERE id = :r AND state = 'completed'", r=canvas_run),
        60,
        "the run started from a Celery signature to complete",
    )

    def seen() -> dict[str, Any] | None:
        # Flower hears task events asynchronously: wait until it has both runs' tasks, all finished.
        tasks = _get(f"{base}/api/tasks") or {}
        args = " ".join(str(t.get("args")) for t in tasks.values())
        both = all(f"task={run}:2 attempt=1" in args for run in (direct.id, canvas_run))
        finished = all(t.get("state") == "SUCCESS" for t in tasks.values())
        return tasks if both and finished and "input=<hidden>" in args else None

    tasks = wait_until(seen, 60, "flower to record the tasks of both runs")
    by_name: dict[str, list[dict[str, Any]]] = {}
    for task in tasks.values():
        by_name.setdefault(task["name"], []).append(task)

    replays = [t["args"] for t in by_name["continuum.replay"]]
    assert f"ops.quick run={direct.id}" in replays
    assert f"ops.quick run={canvas_run}" in replays
    activities = sorted(t["args"] for t in by_name["continuum.activity"] if direct.id in t["args"])
    assert activities == [
        f"tests.support.flows_ops.echo task={direct.id}:1 attempt=1",
        f"tests.support.flows_ops.echo task={direct.id}:2 attempt=1",
    ]
    # The canvas start is one task named after its workflow, SUCCESS when the run completed.
    [start] = by_name["ops.quick"]
    assert start["args"] == "ops.quick input=<hidden>"
    assert start["state"] == "SUCCESS" and get_run(canvas_run).status() == "completed"
    # The workflow input went through the broker (run ids only, or hidden); no monitor ever saw it.
    assert SECRET not in json.dumps(tasks)


def test_flower_shows_a_failed_run_as_failure_under_its_workflow_and_no_sweeps(stack: Stack) -> None:
    stack.modules = ("tests.support.flows_ops",)
    stack.client()
    base, _ = _flower(stack)
    worker = stack.worker(extra_args=("-E",))
    stack.beat()  # the sweep runs every second meanwhile

    failed = failing.apply_async(({"reason": "card declined", "card": SECRET},))
    with pytest.raises(WorkflowFailed, match="card declined"):
        failed.get(timeout=60)
    succeeded = quick.apply_async(({"label": "ok", "card": SECRET},))
    assert succeeded.get(timeout=60) == {"first": "ok", "second": "two"}

    def outcomes() -> dict[str, Any] | None:
        tasks = _get(f"{base}/api/tasks") or {}
        ours = {uuid: tasks.get(uuid, {}) for uuid in (failed.id, succeeded.id)}
        return ours if all(t.get("state") in ("SUCCESS", "FAILURE") for t in ours.values()) else None

    ours = wait_until(outcomes, 60, "flower to hear both runs end")
    failure, success = ours[failed.id], ours[succeeded.id]
    assert (failure["name"], failure["state"]) == ("ops.failing", "FAILURE")
    assert "WorkflowFailed" in failure["exception"] and "card declined" in failure["exception"]
    assert (success["name"], success["state"]) == ("ops.quick", "SUCCESS")
    # Flower's own filter (the Failed tab) finds the run by its workflow's name and state.
    filtered = _get(f"{base}/api/tasks?taskname=ops.failing&state=FAILURE") or {}
    assert list(filtered) == [failed.id]
    wait_until(lambda: worker.output().count("Task continuum.sweep[") >= 3, 60, "the worker to run sweeps")
    tasks = _get(f"{base}/api/tasks") or {}
    assert not [t for t in tasks.values() if t.get("name") == "continuum.sweep"]
    assert SECRET not in json.dumps(tasks)
