"""200 workflows of 5 idempotent effects while a worker process is SIGKILLed every 2 s and restarted."""

from __future__ import annotations

import time

import pytest

from tests.chaos.audit import audit, wait_terminal
from tests.chaos.faults import Phases, start_workers
from tests.support.flows_chaos import steps_flow
from tests.support.stack import Proc, Stack, wait_until

pytestmark = pytest.mark.chaos

RUNS = 200
STEPS = 5
#: Seconds between two kills, and the least time a worker takes work before it is killed.
KILL_EVERY = 2.0
#: Kills at most; then the two last workers finish the work undisturbed.
MAX_KILLS = 8
#: Seconds each effect works: 1,000 of them keep the workers busy across several kills, however
#: fast the engine gets (without it the whole workload can end before the second kill).
BUSY = 0.05


def _open_runs(stack: Stack) -> int:
    return stack.sql("SELECT count(*) AS n FROM continuum_runs WHERE state NOT IN ('completed', 'failed')")[0].n


def _kill_in_turn(stack: Stack, workers: list[Proc]) -> int:
    """Every KILL_EVERY s, SIGKILL the two workers in turn and start a new one in its place.

    A worker is killed only once it has been ready (taking work) for KILL_EVERY s, so each kill
    lands on a busy process rather than on one still importing. Returns the number of kills.
    """
    ready_at: dict[str, float] = {}

    def due(victim: Proc) -> bool:
        now = time.monotonic()
        for proc in workers:
            if proc.name not in ready_at and "ready." in proc.output():
                ready_at[proc.name] = now
        return now - last_kill >= KILL_EVERY and now - ready_at.get(victim.name, now) >= KILL_EVERY

    kills, last_kill = 0, time.monotonic()
    while kills < MAX_KILLS and _open_runs(stack):
        slot = kills % 2
        victim = workers[slot]
        wait_until(lambda v=victim: due(v), 120, f"{victim.name} to take work for {KILL_EVERY} s", interval=0.1)
        victim.kill()
        kills, last_kill = kills + 1, time.monotonic()
        workers[slot] = stack.worker(f"kill-{kills}", wait=False)
    return kills


@pytest.mark.timeout(600)  # 2,200 tasks: minutes when other work shares the two cores
def test_every_run_completes_once_while_workers_are_killed(chaos: Stack) -> None:
    # 200 runs keep a queue several seconds long; a message that merely waits there must not be
    # sent again by the sweep (the duplicates would lengthen the queue further).
    chaos.extra_env["CONTINUUM_REDISPATCH_AFTER"] = "20"
    phase = Phases("kills")
    workers = start_workers(chaos, "kill-a", "kill-b")
    chaos.beat()
    ids = [f"kill-{i}" for i in range(RUNS)]
    for run_id in ids:
        steps_flow.start({"id": run_id, "steps": STEPS, "busy": BUSY}, run_id=run_id)
    phase(f"{RUNS} runs started")
    kills = _kill_in_turn(chaos, workers)
    phase(f"{kills} kills done")
    wait_terminal(chaos.sql, ids, timeout=420)
    phase("all ended")

    result = audit(chaos.sql, expected=ids)
    timeouts = chaos.sql("SELECT count(*) AS n FROM continuum_activity_tasks WHERE error LIKE '%ActivityTimeout%'")
    print(f"kills={kills} attempts timed out={timeouts[0].n} {result.summary()}")
    result.assert_clean()
    assert result.states == {"completed": RUNS}
    assert result.effects == RUNS * STEPS
    keys = chaos.sql("SELECT count(DISTINCT split_part(name, '|', 2)) AS n FROM test_marks WHERE name LIKE 'exec|%'")
    assert keys[0].n == RUNS * STEPS
    # The fault happened: workers died mid-work, and attempts they held timed out and ran again.
    assert kills >= 3
    assert result.retried_tasks >= 1 and timeouts[0].n >= 1
