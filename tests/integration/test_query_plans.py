"""Every statement the engine sends to PostgreSQL reads its rows through an index, on a filled journal.

An in-process engine runs a set of workflows that between them take every path
the journal has: starts, activities inline and through ``continuum.activity``
(an engine with inline activities off and no cache, so each of its steps also
replays from the journal), retries, heartbeats, fan-out, children, timers,
signals, cancels (of a run and of a tree), a saga that compensates, a stored
idempotent result, ``continue_as_new``, a run started from Celery canvas with a
link sent at its end, the version heartbeat and the sweep. Every distinct
statement is captured where psycopg sends it (``tests.support.statements``).

The journal is then filled with copies of those very runs (``bench.fill``):
thousands of finished runs and suspended ones, of the same workflows, so a
statement that narrows only by workflow or state reads them all. Each captured
statement runs again with its captured parameters, with sequential scans
disabled, in a transaction rolled back (``tests.support.plans``), planned both
for its values and generically. The test fails, naming the statement, its
parameters and its plan, if a plan scans a hot table sequentially or reads more
of it than the rows the statement is about (``READ_LIMIT``; the biggest
legitimate read here is one run's history, a few dozen events). Times are
never measured.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from celery import chain

from bench.fill import copy_run
from continuum_celery import RetryPolicy, activity, heartbeat, workflow
from continuum_celery.embedded import embedded_app, running_worker
from continuum_celery.errors import WorkflowFailed
from continuum_celery.examples.fanout import catalogue_flow
from continuum_celery.examples.orders import order_flow
from continuum_celery.installer import Continuum
from continuum_celery.journal.schema import metadata, migrate
from tests.conftest import create_database, drop_database
from tests.support.flows import add, add_chain
from tests.support.flows_canvas import plus_one, squared
from tests.support.flows_ops import counter, parent, sleeper, timer_and_signal, waiter
from tests.support.plans import Verdict, nodes, partial_indexes, plans_of, problems, render
from tests.support.stack import wait_until
from tests.support.statements import Statement, StatementCapture

#: Tables that grow with the runs; continuum_workflow_versions holds a row per version and worker.
HOT_TABLES = {t.name for t in metadata.sorted_tables} - {"continuum_workflow_versions"}
FINISHED_COPIES = 1_000  # of each finished template run
SUSPENDED_COPIES = 500  # of each suspended one
#: Most rows one scan may read: well above one run's rows, well below any template's copies.
READ_LIMIT = 200
WAIT = 30.0
#: Reads no index can narrow, by the index the statement reads whole, with why and what would fix it.
#: Matched on the plan, not on SQL text; the test fails once one no longer shows, so a fix removes it here.
UNINDEXABLE = {
    "continuum_canvas_links_unsent": (
        "the sweep's claim of canvas links (claim_links with no run_id) reads every unsent link, those of runs "
        "still live included, to find the links of ended runs: whether a run ended is in another table. Marking "
        "a run's links due in the transaction that ends it, with a partial index on that mark, would let the "
        "claim read only those."
    ),
}

_first_attempts: set[str] = set()


@activity(heartbeat_timeout=30)
def beating(n: int) -> int:
    heartbeat({"n": n})
    return n


@activity(retry=RetryPolicy(max_attempts=3, initial_interval=0.1, backoff=1.0))
def fails_once(key: str) -> str:
    if key not in _first_attempts:
        _first_attempts.add(key)
        raise RuntimeError("the first attempt fails")
    return key


@workflow(workflow="tests.plans.tour")
def tour(ctx: Any, key: str) -> int:
    """A fan-out of heartbeating activities, then an activity retried once."""
    beats = ctx.gather([ctx.start_activity(beating, i) for i in range(3)])
    ctx.run(fails_once, key)
    return sum(beats)


@workflow(workflow="tests.plans.parked")
def parked(ctx: Any, n: int) -> Any:
    """``n`` activities, then a wait with no end: a suspended run with a history long enough for a snapshot."""
    for i in range(n):
        ctx.run(add, i, 1)
    return ctx.wait_signal("never")


@dataclass(frozen=True)
class Journal:
    url: str  # libpq
    statements: list[Statement]


def _engine(url: str, name: str, **settings: Any) -> Continuum:
    app = embedded_app(f"continuum-{name}")
    app.conf.result_backend = "cache+memory://"  # canvas links store the run's result as a task's
    return Continuum(app, database_url=url, name=name, version_routing=False, snapshot_every=10, **settings)


def _reaches(engine: Continuum, run_id: str, kind: str) -> None:
    wait_until(lambda: any(e.kind.value == kind for e in engine.journal.history(run_id)), WAIT, f"{run_id} at {kind}")


def _inline_workload(engine: Continuum) -> None:
    start = engine.client.start
    assert start(add_chain, 3).result(timeout=WAIT) == 3
    assert start(order_flow, {"id": "o1", "items": ["a"], "cents": 5, "address": "here"}).result(timeout=WAIT)
    with pytest.raises(WorkflowFailed):  # the shipment is refused: the saga refunds and releases
        start(order_flow, {"id": "o2", "items": ["b"], "cents": 7, "address": "nowhere"}).result(timeout=WAIT)
    assert start(catalogue_flow, {"title": "t", "images": ["a.jpg", "b.jpg", "c.jpg"]}).result(timeout=WAIT)
    assert start(tour, "inline").result(timeout=WAIT) == 3
    assert start(counter, 0).result(timeout=WAIT) == 1
    timed = start(timer_and_signal, {"seconds": 0.2})
    _reaches(engine, timed.id, "signal_wait")
    timed.signal("go", {"ok": True})
    assert timed.result(timeout=WAIT) == {"ok": True}
    for flow in (waiter, parent):  # a cancelled run, and a cancelled tree
        handle = start(flow, {})
        _reaches(engine, handle.id, "signal_wait" if flow is waiter else "child_started")
        handle.cancel()
        wait_until(lambda h=handle: h.status() == "cancelled", WAIT, f"{flow.name} cancelled")
    linked = chain(engine.start_signature(squared.name, (4,)), plus_one.s()).delay()
    assert linked.get(timeout=WAIT) == 17
    # Left suspended, as templates of the runs a journal holds most of: waiting on a signal
    # (started from canvas: its link waits for its end), asleep, and long enough for a snapshot.
    engine.start_signature(waiter.name, ({"signal": "never"},)).delay()
    _reaches(engine, start(sleeper, {"seconds": 86_400}).id, "timer_scheduled")
    _reaches(engine, start(parked, 6).id, "signal_wait")
    engine.sweep_once()


def _celery_path_workload(engine: Continuum) -> None:
    assert engine.client.start(add_chain, 3).result(timeout=WAIT) == 3
    assert engine.client.start(tour, "celery-path").result(timeout=WAIT) == 3
    engine.sweep_once()


TEMPLATES = (  # (workflow, state, copies): what the journal is filled with
    (add_chain.name, "completed", FINISHED_COPIES),
    (timer_and_signal.name, "completed", FINISHED_COPIES),
    (order_flow.name, "completed", FINISHED_COPIES),
    (squared.name, "completed", FINISHED_COPIES),
    (waiter.name, "suspended", SUSPENDED_COPIES),
    (sleeper.name, "suspended", SUSPENDED_COPIES),
    (parked.name, "suspended", SUSPENDED_COPIES),
)


def _fill(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for workflow_name, state, copies in TEMPLATES:
            row = conn.execute(
                "SELECT id FROM continuum_runs WHERE workflow = %s AND state = %s AND parent_run_id IS NULL "
                "ORDER BY created_at LIMIT 1",
                (workflow_name, state),
            ).fetchone()
            assert row is not None, f"the workload left no {state} run of {workflow_name}"
            with conn.transaction():
                copy_run(conn, row[0], tag=f"{workflow_name}:{state}", first=1, count=copies)
        conn.execute("VACUUM ANALYZE")


@pytest.fixture(scope="module")
def journal(run_token: str) -> Iterator[Journal]:
    name = f"continuum_t_{run_token}_plans_{uuid.uuid4().hex[:6]}"
    url = create_database(name)
    migrate(url)
    capture = StatementCapture(name)
    try:
        with capture.active():
            for engine_name, settings, workload in (
                ("plans-inline", {}, _inline_workload),
                ("plans-celery-path", {"inline_activities": False, "cache_size": 0}, _celery_path_workload),
            ):
                engine = _engine(url, engine_name, **settings)
                try:
                    with running_worker(engine, concurrency=4):
                        workload(engine)
                finally:
                    engine.journal.close()
        libpq = url.replace("postgresql+psycopg://", "postgresql://")
        _fill(libpq)
        yield Journal(libpq, capture.statements)
    finally:
        drop_database(name)


@pytest.fixture(scope="module")
def verdicts(journal: Journal) -> list[Verdict]:
    checked = plans_of(journal.url, journal.statements)
    partial = partial_indexes(journal.url)
    for verdict in checked:
        for plan in verdict.plans:
            verdict.problems += [(plan, problem) for problem in problems(plan, HOT_TABLES, READ_LIMIT, partial)]
    return checked


def _unindexable(verdict: Verdict) -> str | None:
    """The entry of UNINDEXABLE that explains the verdict's problems, if one does."""
    for plan in verdict.plans:
        for node in nodes(plan.root):
            index = node.get("Index Name")
            if index in UNINDEXABLE and "Index Cond" not in node:
                return str(index)
    return None


def test_the_workload_reaches_every_hot_table(verdicts: list[Verdict]) -> None:
    touched = {n.get("Relation Name") for v in verdicts for p in v.plans for n in nodes(p.root)}
    assert touched >= HOT_TABLES, f"no captured statement touched {sorted(HOT_TABLES - touched)}"
    modes = {p.mode for v in verdicts for p in v.plans}
    assert {"custom", "generic"} <= modes


def _report(verdict: Verdict) -> str:
    statement = verdict.statement
    lines = [statement.sql, f"  ({statement.executions} executions, {len(statement.param_sets)} parameter sets)"]
    seen: dict[str, int] = {}
    for plan, problem in verdict.problems:
        general = re.sub(r"read \d+ rows", "read too many rows", problem)
        seen[general] = seen.get(general, 0) + 1
        if seen[general] > 1:
            continue
        lines.append(f"  - {problem}")
        if plan is not None:
            lines += [f"    parameters: {plan.params!r}", f"    {plan.mode} plan of {plan.query.strip()[:100]!r}:"]
            lines.append(render(plan.root, 3))
    lines += [f"  ({n - 1} more parameter sets: {problem})" for problem, n in seen.items() if n > 1]
    return "\n".join(lines)


def test_no_statement_scans_a_hot_table(verdicts: list[Verdict]) -> None:
    faulty = [v for v in verdicts if v.problems]
    explained = {name: [v for v in faulty if _unindexable(v) == name] for name in UNINDEXABLE}
    bad = [v for v in faulty if _unindexable(v) is None]
    print(f"\n{len(verdicts)} distinct statements, {sum(len(v.plans) for v in verdicts)} plans checked")
    for name, found in explained.items():
        print(f"known, not fixable by an index ({name}): {UNINDEXABLE[name]}")
        print("\n\n".join(_report(v) for v in found))
    assert not bad, f"{len(bad)} of {len(verdicts)} statements read more than they need:\n\n" + "\n\n".join(
        _report(v) for v in bad
    )
    stale = [name for name, found in explained.items() if not found]
    assert not stale, f"UNINDEXABLE explains nothing any more (the statement was fixed?): remove {stale}"
