"""The worker app of ``python -m bench.scale``: the bench's workflow, and the templates of suspended runs.

``celery -A bench.scale_app worker`` serves ``bench.continuum_flow`` (its app,
``bench_flow`` and ``noop``) and two workflows that stay suspended, as most of
the unfinished runs of a real journal do: one asleep on a long durable timer,
one waiting for a signal that never comes.
"""

from __future__ import annotations

from typing import Any

from bench.continuum_flow import app, bench_flow, continuum, noop
from continuum_celery import workflow

__all__ = ["app", "bench_flow", "continuum", "sleeper", "waiter"]


@workflow
def sleeper(ctx: Any, seconds: float) -> None:
    """One activity, then a durable timer of ``seconds``."""
    ctx.run(noop, 0)
    ctx.sleep(seconds)


@workflow
def waiter(ctx: Any, signal: str) -> Any:
    """One activity, then a wait for the signal named ``signal``, with no timeout."""
    ctx.run(noop, 0)
    return ctx.wait_signal(signal)
