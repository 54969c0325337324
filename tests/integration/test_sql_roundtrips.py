"""What one activity step costs in SQL, and how long the 5-activity workflow takes end to end.

The cost is measured on the journal's engine while the real stepper and executor
drive a run of many sequential activities against PostgreSQL, one replay step and
one activity attempt at a time: SQL statements (a ``before_cursor_execute``
listener), transactions (``begin``), and wire round trips (libpq's protocol trace:
one ``ReadyForQuery`` per round trip, so BEGIN and COMMIT count).
The statement count must not grow with the history. Run with ``-s`` to see the
figures; times are printed, never asserted.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from psycopg import pq

from continuum_celery.embedded import embedded_engine
from continuum_celery.executor import run_attempt
from continuum_celery.installer import Continuum
from tests.support.flows import add_chain, sequence_and_fanout
from tests.support.stack import Stack

#: Activities in the measured run: step 5 and step 50 must cost the same.
LONG_RUN = 50
#: Wire round trips on PostgreSQL: of one activity attempt on the Celery path (claim, finish), of the
#: replay step around it with a warm cache (claim + begin, resolve, commit of the claim, take and
#: suspend, commit), and of one inline step (take, record the attempt, commit).
CELERY_ATTEMPT_TRIPS = 2
CELERY_REPLAY_TRIPS = 5
INLINE_STEP_TRIPS = 3


@dataclass(frozen=True)
class Cost:
    statements: int
    transactions: int
    round_trips: int

    def __str__(self) -> str:
        return f"{self.statements:>3} / {self.transactions} / {self.round_trips:>3}"

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.statements + other.statements,
            self.transactions + other.transactions,
            self.round_trips + other.round_trips,
        )


class SQLCounter:
    """Counts what the calls made inside :meth:`measure` cost on one engine."""

    def __init__(self, engine: sa.Engine, trace: Path) -> None:
        self._active = False
        self._statements = 0
        self._transactions = 0
        self._trace_path = trace
        self._trace = trace.open("w")
        engine.dispose()  # only connections opened from now on are traced
        sa.event.listen(engine, "connect", self._on_connect)
        sa.event.listen(engine, "before_cursor_execute", self._on_statement)
        sa.event.listen(engine, "begin", self._on_begin)

    def _on_connect(self, dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.pgconn.trace(self._trace.fileno())
        dbapi_conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def _on_statement(self, *_: Any) -> None:
        self._statements += self._active

    def _on_begin(self, *_: Any) -> None:
        self._transactions += self._active

    def measure(self, call: Callable[[], Any]) -> tuple[Cost, Any]:
        self._statements = self._transactions = 0
        start = self._trace_path.stat().st_size
        self._active = True
        try:
            value = call()
        finally:
            self._active = False
        with self._trace_path.open() as trace:
            trace.seek(start)
            # libpq writes each message as it goes; every round trip ends with one ReadyForQuery.
            trips = sum(1 for line in trace if line.split("\t")[:3:2] == ["B", "ReadyForQuery"])
        return Cost(self._statements, self._transactions, trips), value

    def close(self) -> None:
        self._trace.close()


@pytest.fixture
def measured(clean_pg: str, tmp_path: Path) -> Iterator[tuple[Continuum, SQLCounter]]:
    engine = embedded_engine(clean_pg, name=f"roundtrips-{uuid.uuid4().hex[:6]}")
    counter = SQLCounter(engine.journal.engine, tmp_path / "libpq.trace")  # type: ignore[attr-defined]
    yield engine, counter
    counter.close()
    engine.journal.close()


def _drive(engine: Continuum, counter: SQLCounter, n: int, *, cold: bool) -> tuple[list[tuple[Cost, Cost]], Cost]:
    """Run ``add_chain(n)`` step by step; return (replay, activity) costs per activity, and the last step's."""
    run_id = engine.client.start(add_chain, n).id
    costs = []
    for _ in range(n):
        if cold:
            engine.cache.clear()  # a worker that never saw the run: the whole history is read and replayed
        replay, state = counter.measure(lambda: engine.stepper.step(run_id))
        assert state == "suspended"
        with engine.journal.engine.connect() as conn:  # type: ignore[attr-defined]
            (task_id,) = conn.execute(
                sa.text("SELECT id FROM continuum_activity_tasks WHERE run_id = :r AND state = 'scheduled'"),
                {"r": run_id},
            ).one()
        attempt_once = partial(run_attempt, engine.journal, engine.dispatcher, task_id, 1, engine.owner)
        attempt, status = counter.measure(attempt_once)
        assert status == "completed"
        costs.append((replay, attempt))
    if cold:
        engine.cache.clear()
    final, state = counter.measure(lambda: engine.stepper.step(run_id))
    assert state == "completed"
    assert engine.client.get(run_id).result(timeout=5) == n
    assert len(engine.client.get(run_id).history()) == 2 + 2 * n  # started, n x (scheduled, completed), completed
    return costs, final


def test_sql_cost_per_activity_step_does_not_grow_with_history(measured: tuple[Continuum, SQLCounter]) -> None:
    engine, counter = measured
    engine.stepper.inline_activities = False  # measure the Celery path: one replay task, one activity task
    print(f"\nSQL cost per activity step, a run of {LONG_RUN} sequential activities on PostgreSQL")
    print("(statements / transactions / wire round trips)")
    for cold in (False, True):
        costs, final = _drive(engine, counter, LONG_RUN, cold=cold)
        print(f"\n  {'cold cache (full replay every step)' if cold else 'warm cache (the worker keeps the run)'}")
        print(f"  {'':<12}{'replay step':>16}{'activity attempt':>20}{'together':>16}")
        for k in (1, 2, 5, 10, LONG_RUN):
            replay, attempt = costs[k - 1]
            print(f"  step {k:<7}{replay!s:>16}{attempt!s:>20}{replay + attempt!s:>16}")
        print(f"  {'completion':<12}{final!s:>16}")

        # Bounded by a constant: after the first step, every step costs the same, at 5 as at 50.
        steady = {(r.statements, r.transactions, a.statements, a.transactions) for r, a in costs[1:]}
        assert len(steady) == 1, f"the statement count varies along the history: {sorted(steady)}"
        step5, step50 = costs[4], costs[LONG_RUN - 1]
        assert (step5[0].statements, step5[1].statements) == (step50[0].statements, step50[1].statements)
        assert step50[0].transactions == 2 and step50[1].transactions == 2
        # The attempt claims and finishes in one round trip each; the replay claims, resolves and commits
        # in pipelined transactions (a cold cache reads the history once more).
        assert step50[1].round_trips == CELERY_ATTEMPT_TRIPS
        assert step50[0].round_trips <= CELERY_REPLAY_TRIPS + cold


def test_inline_activity_steps_cost_one_commit_each(measured: tuple[Continuum, SQLCounter]) -> None:
    """A replay task that runs lone awaited activities itself: the whole run in one task, flat per step."""
    engine, counter = measured
    engine.stepper.inline_activities = True  # this test is about the inline path, whatever the environment says
    per_step = {}
    for n in (5, LONG_RUN):
        run_id = engine.client.start(add_chain, n).id
        cost, state = counter.measure(lambda rid=run_id: engine.stepper.step(rid))
        assert state == "completed"
        assert engine.client.get(run_id).result(timeout=5) == n
        with engine.journal.engine.connect() as conn:  # type: ignore[attr-defined]
            owners = conn.execute(
                sa.text("SELECT DISTINCT owner, attempt FROM continuum_activity_tasks WHERE run_id = :r"), {"r": run_id}
            ).all()
        assert owners == [(engine.owner, 1)], "every activity ran in the replay task, on its first attempt"
        per_step[n] = cost
    # One step = one transaction: the last attempt's result, the decision on it, the claim of the next attempt.
    short, long = per_step[5], per_step[LONG_RUN]
    extra = Cost(long.statements - short.statements, long.transactions - short.transactions, 0)
    steps = LONG_RUN - 5
    print(f"\ninline activities: {short} for 5 steps, {long} for {LONG_RUN} (statements / transactions / trips)")
    print(
        f"  per extra step: {extra.statements / steps:.1f} statements, {extra.transactions / steps:.1f} transactions,"
        f" {(long.round_trips - short.round_trips) / steps:.1f} round trips"
    )
    assert extra.transactions == steps
    assert extra.statements % steps == 0, "every step costs the same number of statements"
    assert long.round_trips - short.round_trips <= INLINE_STEP_TRIPS * steps


def test_end_to_end_time_of_the_five_activity_workflow(stack: Stack) -> None:
    stack.client()
    stack.worker(concurrency=2)
    assert add_chain.start(5).result(timeout=60) == 5  # warm-up: imports, connections, prepared statements
    times = []
    for _ in range(5):
        began = time.perf_counter()
        handle = add_chain.start(5)
        assert handle.result(timeout=60) == 5
        times.append(time.perf_counter() - began)
        seqs = [e.seq for e in handle.history()]
        assert seqs == list(range(1, 2 + 2 * 5 + 1))
    began = time.perf_counter()
    assert sequence_and_fanout.start(1).result(timeout=60)["total"] == 10
    fanout = time.perf_counter() - began
    print("\nend to end through a celery worker process (prefork, 2 processes), start() to result():")
    print(f"  5 sequential activities: {', '.join(f'{t * 1000:.0f}' for t in times)} ms")
    print(f"    median {statistics.median(times) * 1000:.0f} ms, min {min(times) * 1000:.0f} ms")
    print(f"  5 sequential + fan-out of 10: {fanout * 1000:.0f} ms")
