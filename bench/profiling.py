"""Optional profile of continuum worker processes (``python -m bench --profile``).

Each prefork child profiles the span of every task it runs with pyinstrument
(started in ``task_prerun``, stopped in ``task_postrun``, so idle waiting for
messages is left out) and saves its session in the profile directory. The
harness then merges the sessions and prints where the time went, by function
and by package.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

SAVE_EVERY_TASKS = 500
PROFILE_INTERVAL_S = 0.0005
MIN_SHARE = 0.001


def install_worker_profiler(profile_dir: str) -> None:
    """Connect Celery signals so each worker child profiles its tasks into ``profile_dir``."""
    from celery import signals
    from pyinstrument import Profiler

    state: dict[str, Any] = {"profiler": None, "tasks": 0}

    def save() -> None:
        profiler = state["profiler"]
        if profiler is not None and profiler.last_session is not None:
            profiler.last_session.save(Path(profile_dir) / f"worker-{os.getpid()}.json")

    @signals.task_prerun.connect(weak=False)
    def _start(**_: Any) -> None:
        if state["profiler"] is None:
            state["profiler"] = Profiler(interval=PROFILE_INTERVAL_S, async_mode="disabled")
        if not state["profiler"].is_running:
            state["profiler"].start()

    @signals.task_postrun.connect(weak=False)
    def _stop(**_: Any) -> None:
        profiler = state["profiler"]
        if profiler is None or not profiler.is_running:
            return
        profiler.stop()
        state["tasks"] += 1
        # Children may be killed rather than shut down; save now and then, not only at exit.
        if state["tasks"] % SAVE_EVERY_TASKS == 0:
            save()

    @signals.worker_process_shutdown.connect(weak=False)
    def _save(**_: Any) -> None:
        save()


def _package(path: str | None) -> str:
    if not path:
        return "<unknown>"
    if path.startswith("<"):  # C functions: pyinstrument reports "<built-in>"
        return path
    parts = Path(path).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    for own in ("continuum_celery", "bench"):
        if own in parts:
            return own
    if path.startswith(sys.base_prefix):
        return "stdlib"
    return "other"


def top_costs(profile_dir: Path, limit: int = 20) -> str:
    """Merge the saved sessions and render the top self-time costs.

    Returns a printable report, or a one-line explanation when there is nothing to show.
    """
    from pyinstrument.session import Session

    paths = sorted(profile_dir.glob("worker-*.json"))
    if not paths:
        return "profile: no worker session was saved"
    session = Session.load(paths[0])
    for path in paths[1:]:
        session = Session.combine(session, Session.load(path))
    root = session.root_frame()
    if root is None:
        return "profile: no samples"

    by_function: dict[str, float] = defaultdict(float)
    by_package: dict[str, float] = defaultdict(float)
    stack = [root]
    while stack:
        frame = stack.pop()
        stack.extend(frame.children)
        if frame.is_synthetic:
            continue
        self_time = frame.total_self_time
        by_function[f"{frame.function}  {frame.file_path_short}:{frame.line_no}"] += self_time
        by_package[_package(frame.file_path)] += self_time

    total = sum(by_package.values()) or 1.0
    lines = [f"profile: {len(paths)} worker process(es), {total:.2f}s of task time sampled"]
    for title, costs in (("package", by_package), ("function", by_function)):
        lines.append(f"  self time by {title}:")
        top = sorted(costs.items(), key=lambda item: item[1], reverse=True)[:limit]
        lines += [f"    {t / total:6.1%}  {name}" for name, t in top if t / total >= MIN_SHARE]
    return "\n".join(lines)
