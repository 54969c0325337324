"""Snapshots of the replay log, and replay cost as a history grows (PostgreSQL, Redis, in-process Celery worker).

The thousand-step run uses the embedded engine (a real Celery worker on a thread
pool inside the test process) so its ``replay_step`` telemetry can be read here.
Run with ``-s`` to see the per-step figures.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from continuum_celery import RunFinished, telemetry
from continuum_celery.config import DEFAULT_SNAPSHOT_EVERY
from continuum_celery.context import RunInfo, context_factory
from continuum_celery.embedded import embedded_engine, running_worker
from continuum_celery.events import Event, Kind
from continuum_celery.installer import Continuum
from continuum_celery.replay import replay_history
from continuum_celery.snapshots import Snapshot, compact, decode, due, encode, extend
from tests.support.flows_compose import many_steps, mixed_history
from tests.support.stack import wait_until

MODULES = ("tests.support.flows", "tests.support.flows_compose")


@contextmanager
def engine_on(database_url: str, redis_url: str, **settings: Any) -> Iterator[Continuum]:
    engine = embedded_engine(
        database_url,
        redis_url=redis_url,
        name=f"snap-{uuid.uuid4().hex[:6]}",
        key_prefix=f"ctest:snap:{uuid.uuid4().hex[:8]}:",
        workflow_modules=MODULES,
        **settings,
    )
    try:
        with running_worker(engine, concurrency=4):
            try:
                yield engine
            finally:
                # A test that failed midway leaves its run going: stop it before the worker goes.
                for run in engine.journal.list_runs(limit=1000):
                    if not run.terminal:
                        with contextlib.suppress(RunFinished):
                            engine.journal.request_cancel(run.id)
    finally:
        engine.journal.close()


@contextmanager
def replay_steps(run_id_of: Any) -> Iterator[list[dict[str, Any]]]:
    """Collect the ``replay_step`` fields of one run (``run_id_of()`` names it once known)."""
    steps: list[dict[str, Any]] = []
    lock = threading.Lock()

    def handler(event: telemetry.TelemetryEvent) -> None:
        if event.run_id == run_id_of():
            with lock:
                steps.append(dict(event.fields))

    unsubscribe = telemetry.subscribe(handler, ["replay_step"])
    try:
        yield steps
    finally:
        unsubscribe()


def _waiting_on(engine: Continuum, run_id: str, signal: str) -> bool:
    """The run is suspended on ``ctx.wait_signal(signal)``."""
    import sqlalchemy as sa

    from continuum_celery.journal.schema import events

    if engine.journal.get_run(run_id).state != "suspended":
        return False
    with engine.journal.engine.connect() as conn:  # type: ignore[attr-defined]
        found = conn.execute(
            sa.select(events.c.seq).where(
                events.c.run_id == run_id, events.c.kind == Kind.SIGNAL_WAIT.value, events.c.name == signal
            )
        ).first()
    return found is not None


def _snapshot_row(engine: Continuum, run_id: str) -> tuple[int, Snapshot | None] | None:
    import sqlalchemy as sa

    from continuum_celery.journal.schema import snapshots

    with engine.journal.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(sa.select(snapshots.c.seq, snapshots.c.state).where(snapshots.c.run_id == run_id)).all()
    assert len(rows) <= 1, "only the latest snapshot is kept"
    return (rows[0].seq, decode(rows[0].state)) if rows else None


# ---- the snapshot format (pure) ----------------------------------------------------------


def test_compact_keeps_what_replay_reads_and_drops_the_rest() -> None:
    history = [
        Event(1, Kind.RUN_STARTED, None, None, {"input": {"big": "x" * 1000}}),
        Event(2, Kind.ACTIVITY_SCHEDULED, 1, "a", {"args": ["x" * 1000], "kwargs": {}, "queue": None}),
        Event(3, Kind.ACTIVITY_COMPLETED, 1, "a", {"result": 5, "attempts": 1}),
        Event(4, Kind.CHILD_STARTED, 2, "wf", {"run_id": "c1", "input": {"big": 1}, "version_hash": "h"}),
        Event(5, Kind.SIGNAL_RECEIVED, 3, "go", {"payload": {"ok": True}, "signal_id": 9}),
        Event(6, Kind.RETRY_REQUESTED, None, None, {"by": "ops"}),
        Event(7, Kind.SIDE_EFFECT, 4, "now", {"value": "2030-01-01T00:00:00+00:00"}),
    ]
    kept = compact(history)
    assert [e.seq for e in kept] == [2, 3, 4, 5, 7]
    assert dict(kept[0].payload) == {"queue": None}
    assert dict(kept[1].payload) == {"result": 5, "attempts": 1}
    assert dict(kept[2].payload) == {"run_id": "c1", "version_hash": "h"}
    assert dict(kept[3].payload) == {"payload": {"ok": True}}
    assert dict(kept[4].payload) == {"value": "2030-01-01T00:00:00+00:00"}

    first = extend(None, history[:3], upto=3)
    second = extend(first, history, upto=7)
    assert decode(encode(second)) == second
    assert second.events == kept
    assert decode('{"format": 0, "upto": 1, "events": []}') is None
    assert due(199, 201, 200) and not due(201, 399, 200) and due(399, 400, 200)


def test_replay_from_a_snapshot_decides_like_the_full_history() -> None:
    from tests.support.flows_compose import child_flow, tick

    def body(ctx: Any, n: int) -> Any:
        token = str(ctx.uuid4())
        values = [ctx.run(tick, i) for i in range(n)]
        child = ctx.start_child(child_flow, 2).result()
        got = ctx.wait_signal("go")
        return ctx.run(tick, len(values)) if got else {"token": token, "child": child}

    history = [Event(1, Kind.RUN_STARTED, None, None, {"input": 3})]
    seq = 1

    def add(kind: Kind, cid: int | None, name: str | None, payload: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        history.append(Event(seq, kind, cid, name, payload))

    add(Kind.SIDE_EFFECT, 1, "uuid4", {"value": str(uuid.UUID(int=7))})
    for i in range(3):
        add(Kind.ACTIVITY_SCHEDULED, i + 2, tick.name, {"args": [i], "kwargs": {}})
        add(Kind.ACTIVITY_COMPLETED, i + 2, tick.name, {"result": i, "attempts": 1})
    add(Kind.CHILD_STARTED, 5, child_flow.name, {"run_id": "child-1", "input": 2})
    add(Kind.CHILD_COMPLETED, 5, child_flow.name, {"run_id": "child-1", "result": 4, "error": None})
    add(Kind.SIGNAL_WAIT, 6, "go", {"timeout_at": None})
    add(Kind.SIGNAL_RECEIVED, 6, "go", {"payload": False, "signal_id": 1})

    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    make = context_factory(RunInfo("r", "wf", "h"))
    full = replay_history(body, 3, history, make, now, run_id="r")
    snap = extend(None, history[:9], upto=9)
    from_snapshot = replay_history(body, 3, [*snap.events, *history[9:]], make, now, run_id="r")
    assert full.outcome == from_snapshot.outcome
    assert full.outcome is not None and full.outcome.result == {"token": str(uuid.UUID(int=7)), "child": 4}
    assert full.commands == from_snapshot.commands == []


# ---- snapshots in the SQL journal ----------------------------------------------------------


def test_cache_misses_replay_from_the_snapshot_to_the_same_result(clean_pg: str, redis_url: str) -> None:
    with engine_on(clean_pg, redis_url, snapshot_every=10, cache_size=0) as engine:
        run_id = str(uuid.uuid4())
        with replay_steps(lambda: run_id) as steps:
            handle = engine.client.start(mixed_history, {"rounds": 12}, run_id=run_id)
            wait_until(lambda: _waiting_on(engine, run_id, "finish"), 60, "the run to wait for its signal")
            row = _snapshot_row(engine, run_id)
            assert row is not None
            seq, snap = row
            last_seq = engine.journal.get_run(run_id).last_seq
            assert snap is not None and snap.upto == seq and last_seq - seq < 10 + 4
            assert all("args" not in e.payload for e in snap.events)
            handle.signal("finish", {"by": "test"})
            result = handle.result(timeout=60)

        assert result["seen"][:4] == [0, 0, -1, 1]  # tick(0), child_flow(0), patched, tick(1)
        assert result["signal"] == {"by": "test"} and result["token"] != result["uuid_again"]
        # With no cache, every claim builds a fresh execution (steps that carry on inline, in the
        # same task after an activity, keep theirs and load nothing).
        claims = [s for s in steps if s["loaded"] > 0]
        assert claims and not any(s["cache_hit"] for s in claims)
        assert max(s["snapshot_seq"] for s in steps) >= 40
        assert _snapshot_row(engine, run_id) is None, "a finished run keeps no snapshot"


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")


def test_a_thousand_steps_replay_cost_stays_flat(clean_pg: str, redis_url: str) -> None:
    pauses = (10, 100, 1000)
    every = DEFAULT_SNAPSHOT_EVERY
    with engine_on(clean_pg, redis_url) as engine:
        run_id = str(uuid.uuid4())
        misses: dict[int, dict[str, Any]] = {}
        tails: dict[int, int] = {}
        with replay_steps(lambda: run_id) as steps:
            handle = engine.client.start(many_steps, {"steps": 1000, "pauses": list(pauses)}, run_id=run_id)
            for k in pauses:
                wait_until(lambda k=k: _waiting_on(engine, run_id, f"at-{k}"), 600, f"the pause after step {k}", 0.25)
                wait_until(lambda: len(engine.cache) == 1, 10, "the execution back in the cache")
                row = _snapshot_row(engine, run_id)
                tails[k] = engine.journal.get_run(run_id).last_seq - (row[0] if row else 0)
                engine.cache.clear()  # the next step is a cache miss
                before = len(steps)
                handle.signal(f"at-{k}")
                wait_until(lambda before=before: len(steps) > before, 30, "the step after the signal")
                misses[k] = steps[before]
            result = handle.result(timeout=300)

    assert result == {"total": sum(range(1, 1001))}
    hits = [s for s in steps if s["cache_hit"]]
    # Structural flatness: a cache hit feeds the engine only the new events, whatever the history length.
    early, late = hits[5:25], hits[-20:]
    assert len(hits) >= 990 and max(s["loaded"] for s in hits) <= 3
    assert max(s["loaded"] for s in early) <= 3 and max(s["loaded"] for s in late) <= 3
    # A cache miss reads the snapshot and at most about snapshot_every events after it.
    for k in pauses:
        assert not misses[k]["cache_hit"]
        assert tails[k] <= every + 4
    assert misses[1000]["snapshot_seq"] > 0 and misses[10]["snapshot_seq"] == 0

    print(f"\nreplay cost per step, {len(steps)} steps, snapshot_every={every}")
    print("  window        hit: advance ms   step ms   events loaded")
    windows = {"step ~10": hits[0:20], "step ~100": hits[90:110], "step ~1000": hits[-20:]}
    for label, window in windows.items():
        print(
            f"  {label:<12} {_median_ms([s['advance'] for s in window]):>16.3f} "
            f"{_median_ms([s['duration'] for s in window]):>9.3f} {max(s['loaded'] for s in window):>15}"
        )
    print("  forced miss   advance ms   step ms   events loaded   snapshot_seq   rows after snapshot")
    for k in pauses:
        m = misses[k]
        print(
            f"  step {k:<7} {m['advance'] * 1000:>11.3f} {m['duration'] * 1000:>9.3f} {m['loaded']:>15} "
            f"{m['snapshot_seq']:>14} {tails[k]:>21}"
        )
    ratio = _median_ms([s["advance"] for s in windows["step ~1000"]]) / _median_ms(
        [s["advance"] for s in windows["step ~10"]]
    )
    print(f"  hit-path advance ratio, step ~1000 / step ~10: {ratio:.2f}")
