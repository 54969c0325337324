"""Workflows and activities of the chaos suite (``tests/chaos``), run by real worker processes.

Everything they record goes to the test database, so it survives the workers
that the scenarios kill:

* ``test_marks`` row ``exec|<key>|<attempt>``: one per execution of an activity
  body, committed with its effect (a held body writes it before holding). Two rows
  for one attempt would mean one attempt ran twice (a duplicate got through the claim).
* ``test_effects`` row ``<key>``: the effect itself, idempotent on its key.
* ``test_marks`` row ``lease_lost|<run>|<token>|<worker>``: a worker whose write
  was fenced off (from the ``lease_lost`` telemetry event of that worker).
* ``test_marks`` rows ``holding|<key>|<worker>`` and ``done|...``: a held body (below).

A body can be told to hold (a window for the test to kill or freeze its
process) until the test writes a ``release|<key>`` mark.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

import sqlalchemy as sa

from continuum_celery import RetryPolicy, activity, telemetry, workflow
from tests.support.flows import effects_engine, mark
from tests.support.stack import wait_until

#: Longest hold of a body waiting for its release mark (a forgotten release cannot hang a test).
MAX_HOLD_SECONDS = 60.0

_attempt = threading.local()


def worker_name() -> str:
    """The name the harness gave this worker process (``CONTINUUM_HOSTNAME``), or the pid."""
    return os.environ.get("CONTINUUM_HOSTNAME") or f"pid{os.getpid()}"


def first_to_claim(key: str) -> bool:
    """True for the one caller that inserts ``key`` into ``test_effects`` first."""
    with effects_engine().begin() as conn:
        row = conn.execute(
            sa.text("INSERT INTO test_effects (key) VALUES (:k) ON CONFLICT DO NOTHING RETURNING key"), {"k": key}
        ).first()
    return row is not None


def hold_until_released(key: str) -> None:
    """Mark ``holding|<key>|<worker>`` and wait until the test marks ``release|<key>``."""
    mark(f"holding|{key}|{worker_name()}")

    def released() -> bool:
        with effects_engine().connect() as conn:
            found = conn.execute(sa.text("SELECT 1 FROM test_marks WHERE name = :n"), {"n": f"release|{key}"})
            return found.first() is not None

    with contextlib.suppress(AssertionError):  # held too long: carry on rather than hang the test
        wait_until(released, MAX_HOLD_SECONDS, f"the release of {key}")


def _note_attempt(event: telemetry.TelemetryEvent) -> None:
    # Emitted on the thread that then calls the activity body, right after the claim.
    _attempt.value = event.fields.get("attempt")


def _record_lease_lost(event: telemetry.TelemetryEvent) -> None:
    mark(f"lease_lost|{event.run_id}|{event.fields.get('token')}|{worker_name()}")


# Only in the harness's worker processes (it names each one): the pytest process imports this
# module too, and the engines of other tests there must not write into a chaos database.
if os.environ.get("CONTINUUM_HOSTNAME"):
    telemetry.subscribe(_note_attempt, ["activity_started"])
    telemetry.subscribe(_record_lease_lost, ["lease_lost"])


def _attempt_now() -> int:
    return int(getattr(_attempt, "value", None) or 0)


@activity(name="chaos.effect", retry=RetryPolicy(max_attempts=30, initial_interval=0.2, backoff=1.0), timeout=3)
def chaos_effect(key: str, hold: bool = False, busy: float = 0.0) -> dict[str, Any]:
    """Record its execution and apply the idempotent effect ``key``.

    With ``hold``, the first attempt records its execution, holds until released, then applies
    the effect and marks ``done|<key>|<attempt>|<worker>``: it is about to report its result.
    ``busy`` seconds of work come first (so a workload lasts long enough for faults to land in it).
    """
    time.sleep(busy)
    attempt = _attempt_now()
    execution = f"exec|{key}|{attempt}"
    held = hold and first_to_claim(f"hold|{key}")
    if held:
        mark(execution)
        hold_until_released(key)
    with effects_engine().begin() as conn:
        record = sa.text("INSERT INTO test_marks (name) VALUES (:n)")
        conn.execute(record, {"n": f"done|{key}|{attempt}|{worker_name()}" if held else execution})
        conn.execute(sa.text("INSERT INTO test_effects (key) VALUES (:k) ON CONFLICT DO NOTHING"), {"k": key})
    return {"key": key, "attempt": attempt, "worker": worker_name()}


@activity(name="chaos.poison", retry=RetryPolicy(max_attempts=5, initial_interval=0.1, backoff=1.0), timeout=1.5)
def chaos_poison(key: str) -> None:
    """Record its execution, then kill the process running it, on every attempt."""
    mark(f"exec|{key}|{_attempt_now()}")
    os._exit(1)


def _effects(ctx: Any, spec: dict[str, Any]) -> list[Any]:
    keys = [f"{spec['id']}:{i}" for i in range(spec.get("steps", 1))]
    busy = spec.get("busy", 0.0)
    return [ctx.run(chaos_effect.options(idempotency_key=key), key, False, busy) for key in keys]


@workflow(workflow="chaos.steps")
def steps_flow(ctx: Any, spec: dict[str, Any]) -> list[Any]:
    """``spec['steps']`` idempotent effects in sequence."""
    return _effects(ctx, spec)


@workflow(workflow="chaos.zombie_step")
def zombie_step_flow(ctx: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """The first worker to run the first step holds inside it (lease held) until released.

    The journaled uuid tells which holder's step the journal kept: each holder
    marks the uuid it drew.
    """
    if first_to_claim(f"hold|{spec['id']}"):
        hold_until_released(spec["id"])
    tag = str(ctx.uuid4())
    mark(f"uuid|{spec['id']}|{tag}|{worker_name()}")
    return {"uuid": tag, "effects": _effects(ctx, spec)}


@workflow(workflow="chaos.zombie_activity")
def zombie_activity_flow(ctx: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """One effect whose first attempt holds until released."""
    key = f"{spec['id']}:0"
    return ctx.run(chaos_effect.options(idempotency_key=key), key, True)


@workflow(workflow="chaos.outside_world")
def outside_world_flow(ctx: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """An effect, a durable sleep, a signal wait, another effect."""
    first = ctx.run(chaos_effect.options(idempotency_key=f"{spec['id']}:0"), f"{spec['id']}:0")
    ctx.sleep(spec.get("sleep", 1.0))
    payload = ctx.wait_signal("go", timeout=spec.get("signal_timeout", 300))
    second = ctx.run(chaos_effect.options(idempotency_key=f"{spec['id']}:1"), f"{spec['id']}:1")
    return {"first": first["key"], "signal": payload, "second": second["key"]}


@workflow(workflow="chaos.timers")
def timers_flow(ctx: Any, spec: dict[str, Any]) -> int:
    """``spec['timers']`` durable sleeps of ``spec['sleep']`` seconds, one after another."""
    for _ in range(spec["timers"]):
        ctx.sleep(spec["sleep"])
    return spec["timers"]


@workflow(workflow="chaos.poisoned")
def poisoned_flow(ctx: Any, spec: dict[str, Any]) -> None:
    """Runs the poison activity; never completes."""
    ctx.run(chaos_poison, spec["id"])


@workflow(workflow="chaos.waiter")
def waiter_flow(ctx: Any, spec: dict[str, Any]) -> Any:
    """Waits for the signal ``go`` and returns its payload."""
    return ctx.wait_signal("go", timeout=spec.get("timeout", 300))


@workflow(workflow="chaos.inbox")
def inbox_flow(ctx: Any, spec: dict[str, Any]) -> list[Any]:
    """Consumes ``count`` signals ``go`` one after another; returns their payloads in order."""
    return [ctx.wait_signal("go") for _ in range(spec["count"])]
