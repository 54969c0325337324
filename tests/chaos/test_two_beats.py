"""Two beat processes at once (a deploy that left the old one running): no timer fires twice."""

from __future__ import annotations

import pytest

from tests.chaos.audit import audit, wait_terminal
from tests.chaos.faults import Phases
from tests.support.flows_chaos import timers_flow
from tests.support.stack import Stack

pytestmark = pytest.mark.chaos

RUNS = 30
TIMERS = 5


def test_two_beats_fire_no_timer_twice(chaos: Stack) -> None:
    phase = Phases("two-beats")
    workers = [chaos.worker("beats-a"), chaos.worker("beats-b")]
    beats = [chaos.beat("beat-one"), chaos.beat("beat-two")]
    ids = [f"timers-{i}" for i in range(RUNS)]
    for run_id in ids:
        timers_flow.start({"timers": TIMERS, "sleep": 0.3}, run_id=run_id)
    wait_terminal(chaos.sql, ids, timeout=120)
    phase("all ended")

    fired = chaos.sql(
        "SELECT run_id, command_id, count(*) AS n FROM continuum_events WHERE kind = 'timer_fired' "
        "GROUP BY run_id, command_id"
    )
    assert [tuple(r) for r in fired if r.n != 1] == []
    assert len(fired) == RUNS * TIMERS
    assert chaos.sql("SELECT count(*) AS n FROM continuum_timers WHERE state <> 'fired'")[0].n == 0
    result = audit(chaos.sql, expected=ids)
    # Both beats were sending sweeps all along, racing each other and the workers' wake-up pumps.
    sends = [b.output().count("Sending due task continuum-sweep") for b in beats]
    dropped = sum(w.output().count("'skipped'") for w in workers)
    print(f"sweeps sent per beat={sends} duplicate replays dropped={dropped} {result.summary()}")
    result.assert_clean()
    assert result.states == {"completed": RUNS}
    assert all(n >= 3 for n in sends)
