"""Workflows of the timer, signal and sweep tests, run by real worker processes.

A workflow body that must hold its lease for a while (to be killed holding it)
blocks on a mark in ``test_marks``: it records ``holding:<id>`` and sleeps only
the first time, so the run resumed by another worker goes straight on.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import sqlalchemy as sa

from continuum_celery import RetryPolicy, SignalTimeout, activity, workflow
from tests.support.flows import add, effects_engine


@workflow(workflow="tests.time.sleep_between")
def sleep_between(ctx, seconds: float) -> dict:
    """An activity, a durable sleep of ``seconds``, another activity."""
    first = ctx.run(add, 1, 2)
    ctx.sleep(timedelta(seconds=seconds))
    second = ctx.run(add, first, 10)
    return {"first": first, "second": second}


@workflow(workflow="tests.time.sleep_until")
def sleep_until(ctx, when: str) -> str:
    """Sleep until the ISO datetime ``when``; return the journaled time after waking."""
    ctx.sleep_until(datetime.fromisoformat(when))
    return ctx.now().isoformat()


@workflow(workflow="tests.time.timers")
def timers(ctx, spec: dict) -> int:
    """``spec['count']`` sleeps of ``spec['seconds']`` each, one after the other."""
    for _ in range(spec["count"]):
        ctx.sleep(spec["seconds"])
    return spec["count"]


@workflow(workflow="tests.time.collect")
def collect(ctx, spec: dict) -> dict:
    """Sleep ``spec['sleep']`` s if given, wait for ``spec['count']`` signals ``spec['name']``,
    then for one more up to ``spec['last_timeout']`` s if given; return the payloads in order."""
    if spec.get("sleep"):
        ctx.sleep(spec["sleep"])
    got = [ctx.wait_signal(spec["name"]) for _ in range(spec["count"])]
    timed_out = False
    if spec.get("last_timeout") is not None:
        try:
            got.append(ctx.wait_signal(spec["name"], timeout=spec["last_timeout"]))
        except SignalTimeout:
            timed_out = True
    return {"got": got, "timed_out": timed_out}


@workflow(workflow="tests.time.nap_or_signal")
def nap_or_signal(ctx, spec: dict) -> object:
    """Either sleep ``spec['sleep']`` seconds or wait for a signal, then run an activity."""
    if spec.get("sleep") is not None:
        ctx.sleep(spec["sleep"])
        value = "slept"
    else:
        value = ctx.wait_signal("go")
    ctx.run(add, 0, 1)
    return {"id": spec["id"], "value": value}


def _hold_first_time(key: str, seconds: float) -> None:
    """Mark ``holding:<key>`` and sleep ``seconds``, unless the mark is already there."""
    name = f"holding:{key}"
    with effects_engine().begin() as conn:
        held = conn.execute(sa.text("SELECT count(*) FROM test_marks WHERE name = :k"), {"k": name}).scalar()
        if not held:
            conn.execute(sa.text("INSERT INTO test_marks (name) VALUES (:k)"), {"k": name})
    if not held:
        time.sleep(seconds)


@activity(retry=RetryPolicy(max_attempts=3, initial_interval=0.2), timeout=3)
def effect_after_hold(key: str, hold: float) -> str:
    """Record effect ``key``; the first attempt holds ``hold`` seconds first (past its 3 s timeout)."""
    _hold_first_time(key, hold)
    with effects_engine().begin() as conn:
        conn.execute(sa.text("INSERT INTO test_effects (key) VALUES (:k) ON CONFLICT DO NOTHING"), {"k": key})
    return key


@activity(timeout=3)
def quick_add(a: int, b: int) -> int:
    """``add`` with a 3 s start-to-close timeout: an attempt lost with its worker is retried soon."""
    return a + b


@workflow(workflow="tests.time.hold_lease")
def hold_lease(ctx, spec: dict) -> dict:
    """Run an activity, then block the body (holding the run lease) the first time only.

    The activity may run inside the replay task and be journaled only with the step's next
    commit; a worker killed during the hold then loses that attempt too, which is retried
    once its (short) timeout expires.
    """
    first = ctx.run(quick_add, 2, 3)
    _hold_first_time(spec["id"], spec["hold"])
    return {"first": first, "second": ctx.run(quick_add, first, 1)}


@workflow(workflow="tests.time.hold_activity")
def hold_activity(ctx, spec: dict) -> str:
    """Run :func:`effect_after_hold` once."""
    return ctx.run(effect_after_hold, spec["id"], spec["hold"])
