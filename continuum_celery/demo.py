"""``continuum demo``: three example workflows on the embedded default, with a live progress view."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .cli_format import compact, table
from .embedded import embedded_engine, running_worker
from .errors import WorkflowFailed
from .runtime import RunHandle

DEMO_DEADLINE = 60.0
EXAMPLE_MODULES = (
    "continuum_celery.examples.orders",
    "continuum_celery.examples.approvals",
    "continuum_celery.examples.fanout",
)
LABEL_WIDTH = 48
RESULT_WIDTH = 80


def _scenarios() -> list[tuple[str, Any, Any, str]]:
    from continuum_celery.examples.approvals import approval_flow
    from continuum_celery.examples.fanout import catalogue_flow
    from continuum_celery.examples.orders import order_flow

    return [
        (
            "order saga, happy path",
            order_flow,
            {"id": "A-100", "items": ["mug", "tee"], "cents": 2599, "address": "1 Main St"},
            "completed",
        ),
        (
            "order saga, shipping refused -> refund + release",
            order_flow,
            {"id": "A-101", "items": ["lamp"], "cents": 4999, "address": "nowhere"},
            "failed",
        ),
        (
            "approval: timer, then a signal",
            approval_flow,
            {"id": "REQ-7", "approver": "dana", "grace_seconds": 1, "timeout_seconds": 30},
            "completed",
        ),
        (
            "fan-out of 8 resizes + a child workflow",
            catalogue_flow,
            {"title": "Spring", "images": [f"img{i}.png" for i in range(8)]},
            "completed",
        ),
    ]


def _describe(handle: RunHandle) -> str:
    try:
        return compact(handle.result(timeout=0.01), RESULT_WIDTH)
    except WorkflowFailed as exc:
        comps = [
            f"{c['activity'].rsplit('.', 1)[-1]} {'done' if c['ok'] else 'FAILED'}"
            for c in (exc.error or {}).get("compensations", [])
        ]
        message = str(exc.error.get("message", "")).split(": ", 1)[-1]
        return f"{exc.error.get('type')} ({message}); compensations: {', '.join(comps) or 'none'}"


def _waiting_for_signal(handle: RunHandle) -> bool:
    return any(e.kind.value == "signal_wait" for e in handle.history())


@contextmanager
def _journal_url(database_url: str | None, keep: bool) -> Iterator[tuple[str, str | None]]:
    """The demo's journal URL and the temporary directory holding it (None for a given URL).

    The directory is removed afterwards unless ``keep``.
    """
    if database_url:
        yield database_url, None
        return
    workdir = tempfile.mkdtemp(prefix="continuum-demo-")
    try:
        yield f"sqlite:///{os.path.join(workdir, 'journal.sqlite3')}", workdir
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def run_demo(
    database_url: str | None = None,
    redis_url: str | None = None,
    echo: Callable[[str], None] = print,
    *,
    keep: bool = False,
) -> int:
    """Run the demo; return 0 when every run ended as expected.

    Without ``database_url`` the journal is a SQLite file in a temporary directory, removed at
    the end unless ``keep``.
    """
    with _journal_url(database_url, keep) as (url, workdir):
        ok = _run(url, redis_url, echo)
        if workdir is None or keep:
            echo(f"look closer: continuum --database-url {url} runs list   (then: runs show <id>, doctor)")
        else:
            echo("the demo's journal was removed; `continuum demo --keep` keeps it to look closer.")
    return 0 if ok else 1


def _run(url: str, redis_url: str | None, echo: Callable[[str], None]) -> bool:
    """Start the example runs on an embedded engine, show their progress; whether all ended as expected."""
    scenarios = _scenarios()
    echo(f"continuum demo: {len(scenarios)} runs of the example workflows (continuum_celery.examples), in-process")
    echo(f"  journal: {url}")
    echo(f"  wake-ups: {redis_url or 'in-process'}")
    echo("")
    engine = embedded_engine(url, redis_url=redis_url, name="demo", workflow_modules=EXAMPLE_MODULES)
    try:
        with running_worker(engine):
            return _watch(scenarios, echo)
    finally:
        engine.journal.close()  # before the temporary directory holding it goes


def _watch(scenarios: list[tuple[str, Any, Any, str]], echo: Callable[[str], None]) -> bool:
    """Start each scenario's run, print its progress until all end; whether each ended as expected."""
    began = time.monotonic()

    def say(label: str, what: str) -> None:
        echo(f"  {time.monotonic() - began:6.2f}s  {label:<{LABEL_WIDTH}}  {what}")

    runs = [(label, wf.start(payload), expected) for label, wf, payload, expected in scenarios]
    seen: dict[str, str] = {}
    signalled = False
    deadline = time.monotonic() + DEMO_DEADLINE
    while time.monotonic() < deadline:
        for label, handle, _ in runs:
            state = handle.status()
            if seen.get(handle.id) != state:
                seen[handle.id] = state
                say(label, f"{state}  ({len(handle.history())} events)")
            if "approval" in label and not signalled and _waiting_for_signal(handle):
                say(label, "<- signal decision={approved: true, by: dana}")
                handle.signal("decision", {"approved": True, "by": "dana"})
                signalled = True
        if all(seen.get(h.id) in ("completed", "failed", "cancelled") for _, h, _ in runs):
            break
        time.sleep(0.05)
    echo("")
    rows = []
    ok = True
    for label, handle, expected in runs:
        state = handle.status()
        ok &= state == expected
        mark = "" if state == expected else f" (expected {expected})"
        rows.append((label, state + mark, len(handle.history()), _describe(handle)))
    echo(table(("RUN", "STATE", "EVENTS", "RESULT"), rows))
    echo("")
    verdict = "all runs ended as expected" if ok else "SOME RUNS DID NOT END AS EXPECTED"
    echo(f"{verdict} in {time.monotonic() - began:.1f}s")
    return ok
