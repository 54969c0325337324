"""A poison activity kills its worker process on every attempt: the run fails after exactly
max_attempts (5) attempts, the worker survives, and other runs keep flowing meanwhile."""

from __future__ import annotations

import pytest

from continuum_celery import WorkflowFailed
from tests.chaos.audit import audit, marks, wait_terminal
from tests.chaos.faults import Phases
from tests.support.flows_chaos import poisoned_flow, steps_flow
from tests.support.stack import Proc, Stack, wait_until

pytestmark = pytest.mark.chaos

OTHERS = 20


def test_a_poison_activity_fails_its_run_after_exactly_five_attempts(chaos: Stack) -> None:
    phase = Phases("poison")
    worker = chaos.worker("poison-w", concurrency=2)
    chaos.beat()
    poison = poisoned_flow.start({"id": "poison"}, run_id="poison")
    wait_until(lambda: marks(chaos.sql, "exec"), 60, "the first poisoned attempt")
    phase("first poisoned attempt killed its process")
    others = [f"other-{i}" for i in range(OTHERS)]
    for run_id in others:
        steps_flow.start({"id": run_id, "steps": 2}, run_id=run_id)

    with pytest.raises(WorkflowFailed) as failure:
        poison.result(timeout=120)
    phase("poisoned run failed")
    assert failure.value.state == "failed"
    assert "chaos.poison" in str(failure.value)
    task = chaos.sql("SELECT state, attempt, max_attempts FROM continuum_activity_tasks WHERE run_id = 'poison'")
    assert [tuple(t) for t in task] == [("failed", 5, 5)]
    assert sorted(int(m[2]) for m in marks(chaos.sql, "exec") if m[1] == "poison") == [1, 2, 3, 4, 5]

    # Other runs flowed while the poison was killing processes: they completed before it failed.
    wait_terminal(chaos.sql, others, timeout=60)
    failed_at = chaos.sql("SELECT updated_at FROM continuum_runs WHERE id = 'poison'")[0].updated_at
    early = chaos.sql(
        "SELECT count(*) AS n FROM continuum_runs WHERE id = ANY(:ids) AND state = 'completed' AND updated_at < :t",
        ids=others,
        t=failed_at,
    )[0].n
    # Each attempt took its process down with it; the worker logs each death (on its own schedule).
    wait_until(lambda: _deaths(worker) >= 5, 30, "the worker to log five dead processes")
    deaths = _deaths(worker)
    result = audit(chaos.sql, expected=[*others, "poison"])
    print(f"run error: {failure.value}")
    print(f"process deaths={deaths} others done before the poison failed={early}/{OTHERS} {result.summary()}")
    result.assert_clean()
    assert result.states == {"completed": OTHERS, "failed": 1}
    assert early >= 1
    assert deaths == 5
    assert worker.popen.poll() is None  # the worker itself survived its children's deaths


def _deaths(worker: Proc) -> int:
    return worker.output().count("exited with 'exitcode 1'")
