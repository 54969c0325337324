"""Body threads of cached executions never pile up in a pool process.

A workflow body runs in a thread of its own, parked between steps while its execution
is cached. Two ways used to leave such threads parked for good: a replay step failing
with a database error (not ``LeaseLost``), and cached executions of runs that a
different pool process finished. Threads are counted in the real pool processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.audit import audit, wait_terminal
from tests.chaos.faults import open_runs, signal_all
from tests.support.flows_chaos import waiter_flow
from tests.support.stack import Proc, Stack, wait_until

pytestmark = pytest.mark.chaos

FAILURES = 30
RUNS = 100
#: Threads of an idle pool process: main, lease renewer, finished-run watch, and a little slack.
IDLE_THREADS = 6

INJECT = """
CREATE SEQUENCE test_commit_failures;
CREATE FUNCTION test_fail_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('test_commit_failures');
    RAISE EXCEPTION 'injected failure of a replay commit';
END $$;
CREATE TRIGGER test_fail_commit BEFORE INSERT ON continuum_events
    FOR EACH ROW WHEN (NEW.kind = 'signal_wait') EXECUTE FUNCTION test_fail_commit();
"""


def pool_children(worker: Proc) -> list[int]:
    """The pids of a worker's pool processes."""
    main = worker.popen.pid
    return [int(pid) for pid in Path(f"/proc/{main}/task/{main}/children").read_text().split()]


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def waiting(stack: Stack, run_ids: list[str]) -> bool:
    rows = stack.sql(
        "SELECT count(*) AS n FROM continuum_timers WHERE run_id = ANY(:ids) AND kind = 'signal'", ids=run_ids
    )
    return rows[0].n == len(run_ids)


def failures(stack: Stack) -> int:
    row = stack.sql("SELECT last_value, is_called FROM test_commit_failures")[0]
    return int(row.last_value) if row.is_called else 0


def test_replays_failing_with_a_database_error_release_their_threads(chaos: Stack) -> None:
    stack = chaos
    worker = stack.worker(concurrency=1)  # one pool process: every failure lands in it
    stack.beat()
    warm = ["warm-0"]
    waiter_flow.start({}, run_id=warm[0])
    wait_until(lambda: waiting(stack, warm), 60, "the warm-up run to wait")
    (child,) = pool_children(worker)
    signal_all(stack, warm, "warm")
    wait_terminal(stack.sql, warm, timeout=60)
    before = threads(child)

    stack.sql(INJECT)
    doomed = [f"doomed-{i}" for i in range(FAILURES)]
    for run_id in doomed:
        waiter_flow.start({}, run_id=run_id)
    wait_until(lambda: failures(stack) >= FAILURES, 120, f"{FAILURES} failed replay commits")
    after = threads(child)
    stack.sql("DROP TRIGGER test_fail_commit ON continuum_events")

    # Before the fix each failure parked one body thread for good: 30 failures, 30 more threads.
    assert after <= before + 1, (before, after)
    assert "injected failure of a replay commit" in worker.output()
    # Nothing was lost: once the database accepts the commits again, every run ends, once.
    wait_until(lambda: waiting(stack, doomed), 120, "the doomed runs to wait once commits succeed")
    signal_all(stack, doomed, "late")
    wait_terminal(stack.sql, doomed, timeout=120)
    result = audit(stack.sql, expected=warm + doomed)
    result.assert_clean()
    assert result.states == {"completed": FAILURES + 1}


def test_runs_ended_by_another_pool_process_leave_no_parked_threads(chaos: Stack) -> None:
    stack = chaos
    worker = stack.worker(concurrency=2)
    stack.beat()
    ids = [f"parked-{i}" for i in range(RUNS)]
    for run_id in ids:
        waiter_flow.start({}, run_id=run_id)
    wait_until(lambda: waiting(stack, ids), 120, "every run to wait for its signal")
    children = pool_children(worker)
    parked = sum(threads(pid) for pid in children)
    # The evidence: each waiting run keeps its body parked in whichever process stepped it.
    assert parked >= RUNS, parked

    signal_all(stack, ids, "go")
    wait_until(lambda: not open_runs(stack, ids), 120, "every run to complete")
    # About half the runs end in the other process than the one that cached them; the finish
    # notification makes that one close its copy.
    wait_until(
        lambda: all(threads(pid) <= IDLE_THREADS for pid in children),
        30,
        f"each pool process to drop to {IDLE_THREADS} threads: {[threads(pid) for pid in children]}",
    )
    result = audit(stack.sql, expected=ids)
    result.assert_clean()
    assert result.states == {"completed": RUNS}
