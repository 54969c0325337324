"""A zombie: a worker frozen (SIGSTOP) past its leases while another takes its work over, then thawed."""

from __future__ import annotations

import signal

import pytest

from tests.chaos.audit import audit, marks, wait_terminal
from tests.support.flows_chaos import zombie_activity_flow, zombie_step_flow
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.chaos


def test_every_write_of_a_thawed_zombie_is_rejected(chaos: Stack) -> None:
    zombie = chaos.worker("zombie", concurrency=2)
    step = zombie_step_flow.start({"id": "zs", "steps": 1}, run_id="zombie-step")
    act = zombie_activity_flow.start({"id": "za"}, run_id="zombie-activity")
    # The zombie holds the run lease of zombie-step (inside a replay step) and attempt 1 of za:0.
    wait_until(lambda: len(marks(chaos.sql, "holding")) == 2, 60, "the zombie to hold both")
    zombie.signal(signal.SIGSTOP)
    try:
        chaos.worker("heir")
        chaos.beat()
        wait_terminal(chaos.sql, [step.id, act.id], timeout=90)
    finally:
        zombie.signal(signal.SIGCONT)
    chaos.sql("INSERT INTO test_marks (name) VALUES ('release|zs'), ('release|za:0')")

    # Thawed, the zombie finishes both and tries to write: both writes must bounce.
    wait_until(lambda: "'lease_lost'" in zombie.output(), 60, "the zombie's replay step to end")
    wait_until(lambda: "'stale'" in zombie.output(), 60, "the zombie's activity attempt to end")
    lease_lost = marks(chaos.sql, "lease_lost")
    assert [(m[1], m[3]) for m in lease_lost] == [(step.id, "zombie")]

    # The journal holds the heir's step, not the zombie's: the uuid drawn by the heir was journaled.
    drawn = {m[3]: m[2] for m in marks(chaos.sql, "uuid")}
    assert set(drawn) == {"zombie", "heir"} and drawn["zombie"] != drawn["heir"]
    journaled = [e for e in step.history() if e.kind.value == "side_effect"]
    assert [e.payload["value"] for e in journaled] == [drawn["heir"]]
    assert step.result(timeout=5)["uuid"] == drawn["heir"]

    # The activity: attempt 1 (zombie) timed out, attempt 2 (heir) completed; one effect.
    assert act.result(timeout=5) == {"key": "za:0", "attempt": 2, "worker": "heir"}
    executions = sorted(m[1:] for m in marks(chaos.sql, "exec") if m[1] == "za:0")
    assert executions == [["za:0", "1"], ["za:0", "2"]]
    assert chaos.sql("SELECT count(*) AS n FROM test_effects WHERE key = 'za:0'")[0].n == 1

    result = audit(chaos.sql, expected=[step.id, act.id])
    print(result.summary())
    result.assert_clean()
    assert result.states == {"completed": 2}
    assert result.lease_lost == 1 and result.reexecutions == 1
