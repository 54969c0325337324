"""Workflows for the operations tests (CLI, doctor, Flower, metrics): one per waiting state.

Holding points are rows in ``test_marks``: an activity or a workflow step writes
``holding:<key>`` when it starts holding, and a step waits for ``release:<key>``.
"""

from __future__ import annotations

import os

import sqlalchemy as sa

from continuum_celery import RetryPolicy, activity, workflow
from tests.support.flows import effects_engine
from tests.support.stack import wait_until

#: Longest a holding activity or step waits before giving up on its own.
HOLD_LIMIT = 120.0


def _mark(name: str) -> None:
    with effects_engine().begin() as conn:
        conn.execute(sa.text("INSERT INTO test_marks (name) VALUES (:n)"), {"n": name})


def _marked(name: str) -> bool:
    with effects_engine().connect() as conn:
        return conn.execute(sa.text("SELECT 1 FROM test_marks WHERE name = :n"), {"n": name}).first() is not None


@activity
def echo(value: str) -> str:
    return value


@activity
def echo_other(value: str) -> str:
    return value


class Refused(Exception):
    """A failure not worth retrying."""


@activity(retry=RetryPolicy(max_attempts=1, non_retryable=(Refused,)))
def refuse(reason: str) -> None:
    raise Refused(reason)


@activity
def always_fails(reason: str) -> None:
    raise RuntimeError(reason)


def _hold_until_released(key: str) -> None:
    """Mark ``holding:<key>``, then wait (at most HOLD_LIMIT s) for the test to mark ``release:<key>``."""
    _mark(f"holding:{key}")
    wait_until(lambda: _marked(f"release:{key}"), HOLD_LIMIT, f"the release of {key}", interval=0.1)


@activity(retry=RetryPolicy(max_attempts=5, initial_interval=0.5), timeout=HOLD_LIMIT + 30)
def hold(key: str) -> str:
    """Mark ``holding:<key>`` and wait for ``release:<key>`` (a window to kill the worker)."""
    _hold_until_released(key)
    return key


@workflow(workflow="ops.quick")
def quick(ctx, spec: dict) -> dict:
    """Two activities in a row; the input may carry a secret that must never show in a monitor."""
    first = ctx.run(echo, spec.get("label", "one"))
    return {"first": first, "second": ctx.run(echo, "two")}


@workflow(workflow="ops.sleeper")
def sleeper(ctx, spec: dict) -> str:
    ctx.sleep(spec.get("seconds", 3600))
    return "woke"


@workflow(workflow="ops.waiter")
def waiter(ctx, spec: dict) -> object:
    return ctx.wait_signal(spec.get("signal", "go"), timeout=spec.get("timeout"))


@workflow(workflow="ops.parent")
def parent(ctx, spec: dict) -> object:
    child = ctx.start_child(waiter, {"signal": spec.get("signal", "go")})
    return child.result()


@workflow(workflow="ops.flaky")
def flaky(ctx, spec: dict) -> None:
    """An activity that fails and then waits a long back-off before its next attempt."""
    backoff = spec.get("backoff", 3600.0)
    policy = RetryPolicy(max_attempts=3, initial_interval=backoff, backoff=1.0, max_interval=backoff)
    ctx.run(always_fails.options(retry=policy), spec.get("reason", "the service is down"))


@workflow(workflow="ops.failing")
def failing(ctx, spec: dict) -> None:
    ctx.run(refuse, spec.get("reason", "no"))


@workflow(workflow="ops.counter")
def counter(ctx, n: int) -> int:
    """Continues as new once, then completes."""
    if n < 1:
        return ctx.continue_as_new(n + 1)
    return n


@workflow(workflow="ops.holder")
def holder(ctx, key: str) -> str:
    return ctx.run(hold, key)


@workflow(workflow="ops.blocking_step")
def blocking_step(ctx, key: str) -> str:
    """Holds its first replay step (and so the run's lease) until ``release:<key>`` is marked."""
    _hold_until_released(key)
    return ctx.run(echo, key)


@workflow(workflow="ops.branching")
def branching(ctx, label: str) -> str:
    """Deliberately nondeterministic: the first activity depends on the process environment."""
    first = echo_other if os.environ.get("CONTINUUM_TEST_BRANCH") == "b" else echo
    ctx.run(first, label)
    return ctx.run(echo, "done")


@workflow(workflow="ops.timer_and_signal")
def timer_and_signal(ctx, spec: dict) -> object:
    """A short durable timer, then a signal: moves the timer and signal counters."""
    ctx.run(echo, "before")
    ctx.sleep(spec.get("seconds", 0.2))
    return ctx.wait_signal("go", timeout=60)
