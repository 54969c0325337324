"""Two beat processes at once (a deploy that left the old one running): no timer fires twice."""

from __future__ import annotations

import pytest

from tests.chaos.audit import audit, wait_terminal
from tests.chaos.faults import Phases, start_workers
from tests.support.flows_chaos import timers_flow
from tests.support.stack import Proc, Stack, wait_until

pytestmark = pytest.mark.chaos

RUNS = 30
TIMERS = 5
SLEEP = 0.5


def test_two_beats_fire_no_timer_twice(chaos: Stack) -> None:
    phase = Phases("two-beats")
    workers = start_workers(chaos, "beats-a", "beats-b")
    beats = [chaos.beat("beat-one"), chaos.beat("beat-two")]
    wait_until(lambda: all(_sweeps(b) for b in beats), 60, "both beats to send sweeps")
    before = [_sweeps(b) for b in beats]
    ids = [f"timers-{i}" for i in range(RUNS)]
    for run_id in ids:
        timers_flow.start({"timers": TIMERS, "sleep": SLEEP}, run_id=run_id)
    wait_terminal(chaos.sql, ids, timeout=120)
    during = [_sweeps(b) - n for b, n in zip(beats, before, strict=True)]
    phase(f"all ended; sweeps sent meanwhile by each beat: {during}")

    fired = chaos.sql(
        "SELECT run_id, command_id, count(*) AS n FROM continuum_events WHERE kind = 'timer_fired' "
        "GROUP BY run_id, command_id"
    )
    assert [tuple(r) for r in fired if r.n != 1] == []
    assert len(fired) == RUNS * TIMERS
    assert chaos.sql("SELECT count(*) AS n FROM continuum_timers WHERE state <> 'fired'")[0].n == 0
    result = audit(chaos.sql, expected=ids)
    dropped = sum(w.output().count("'skipped'") for w in workers)
    print(f"duplicate replays dropped={dropped} {result.summary()}")
    result.assert_clean()
    assert result.states == {"completed": RUNS}
    # Both beats swept all along (every half second, for runs of 2.5 s at least), racing each other
    # and the workers' wake-up pumps for the same due timers.
    assert all(n >= 2 for n in during)


def _sweeps(beat: Proc) -> int:
    return beat.output().count("Sending due task continuum-sweep")
