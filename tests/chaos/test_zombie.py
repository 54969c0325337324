"""A zombie: a worker frozen (SIGSTOP) past its leases while another takes its work over, then thawed.

The zombie is frozen while it holds the lease of a run (inside a replay step) and an activity
attempt (whether it runs inline in a replay task or as its own Celery task). Thawed, it carries on
and tries to record both; every such write must be refused and leave no trace in the journal.
"""

from __future__ import annotations

import re
import signal

import pytest

from tests.chaos.audit import audit, marks, wait_terminal
from tests.chaos.faults import Phases
from tests.support.flows_chaos import zombie_activity_flow, zombie_step_flow
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.chaos


def _received(log: str) -> list[str]:
    return re.findall(r"Task continuum\.\w+\[([0-9a-f-]+)\] received", log)


def _ended(log: str, task_id: str) -> str | None:
    """What a task returned (``'lease_lost'``, ``'stale'``, a run state...), once it has ended."""
    found = re.search(rf"\[{task_id}\] (?:succeeded in [0-9.]+s: (.*)|raised .*)", log)
    return None if found is None else (found.group(1) or "raised")


def test_every_write_of_a_thawed_zombie_is_rejected(chaos: Stack) -> None:
    phase = Phases("zombie")
    zombie = chaos.worker("zombie", concurrency=2)
    step = zombie_step_flow.start({"id": "zs", "steps": 1}, run_id="zombie-step")
    act = zombie_activity_flow.start({"id": "za"}, run_id="zombie-activity")
    wait_until(lambda: len(marks(chaos.sql, "holding")) == 2, 60, "the zombie to hold both")
    zombie.signal(signal.SIGSTOP)
    held_tasks = _received(zombie.output())
    phase(f"zombie frozen holding a run lease and an attempt, in tasks {held_tasks}")
    try:
        chaos.worker("heir")
        chaos.beat()
        wait_terminal(chaos.sql, [step.id, act.id], timeout=90)
        phase("the heir took both over and finished them")
    finally:
        zombie.signal(signal.SIGCONT)
    chaos.sql("INSERT INTO test_marks (name) VALUES ('release|zs'), ('release|za:0')")

    # Thawed, the zombie finishes what it held and tries to record it.
    wait_until(lambda: all(_ended(zombie.output(), t) for t in held_tasks), 60, "the zombie's tasks to end")
    returned = {t: _ended(zombie.output(), t) for t in held_tasks}
    phase(f"zombie thawed; its tasks returned {returned}")
    assert "'lease_lost'" in returned.values()  # the run step's commit, at least
    assert sorted(m[1:] for m in marks(chaos.sql, "holding")) == [["za:0", "zombie"], ["zs", "zombie"]]

    # The run step: its commit raised LeaseLost (so did the attempt's, when it ran inline in a replay step
    # and is recorded with the run's next commit), and the journal kept the heir's step, not the zombie's:
    # each holder drew its own journaled uuid.
    fenced = {(m[1], m[3]) for m in marks(chaos.sql, "lease_lost")}
    assert (step.id, "zombie") in fenced and fenced <= {(step.id, "zombie"), (act.id, "zombie")}
    drawn = {m[3]: m[2] for m in marks(chaos.sql, "uuid")}
    assert set(drawn) == {"zombie", "heir"} and drawn["zombie"] != drawn["heir"]
    journaled = [e.payload["value"] for e in step.history() if e.kind.value == "side_effect"]
    assert journaled == [drawn["heir"]]
    assert step.result(timeout=5)["uuid"] == drawn["heir"]

    # The attempt: the zombie ran attempt 1 to its end and reported it, but the journal holds the heir's
    # attempt 2; the idempotent effect happened once.
    assert [m[1:] for m in marks(chaos.sql, "done")] == [["za:0", "1", "zombie"]]
    assert act.result(timeout=5) == {"key": "za:0", "attempt": 2, "worker": "heir"}
    completions = [e.payload for e in act.history() if e.kind.value == "activity_completed"]
    assert [c["result"]["worker"] for c in completions] == ["heir"]
    assert sorted(m[1:] for m in marks(chaos.sql, "exec")) == [["za:0", "1"], ["za:0", "2"], ["zs:0", "1"]]
    assert chaos.sql("SELECT count(*) AS n FROM test_effects WHERE key = 'za:0'")[0].n == 1

    result = audit(chaos.sql, expected=[step.id, act.id])
    print(result.summary())
    result.assert_clean()
    assert result.states == {"completed": 2}
    assert result.lease_lost >= 1 and result.reexecutions == 1
