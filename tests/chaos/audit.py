"""The end-of-scenario audit: what the journal (and the effect log) says after a fault.

Every count is read from PostgreSQL, the only source of truth, never from what
the test process believes happened. A clean scenario has all five counts at 0:

* ``lost``: runs started (or expected) that are not terminal;
* ``completed_twice``: runs with more than one terminal event;
* ``seq_gaps``: runs whose events are not numbered 1..n or whose ``last_seq`` disagrees;
* ``stale_writes``: writes only a fenced-off holder could have made: a command or
  an outcome journaled twice for one command id, an outcome with no command
  before it, an event after the terminal one;
* ``duplicate_effects``: an activity attempt executed twice (``exec|key|attempt``
  marks), or an execution that began after its task had completed.

The evidence fields say what the fault did, so a scenario cannot pass without it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from continuum_celery.events import COMMANDS, OUTCOMES, TERMINAL_EVENTS
from continuum_celery.states import TERMINAL as TERMINAL_STATES
from tests.support.stack import wait_until

#: Runs a statement with bound parameters and returns its rows, like ``Stack.sql``.
Sql = Callable[..., list[Any]]


def _in(kinds: Iterable[Any]) -> str:
    return "(" + ", ".join(f"'{k.value}'" for k in sorted(kinds, key=lambda k: k.value)) + ")"


@dataclass
class Audit:
    """What the journal says after a scenario.

    The five lists name each offender (they must be empty); the numbers after them are the
    evidence: effects applied, activity executions (and those of attempts > 1), the highest
    attempt, tasks that needed more than one attempt, ``lease_lost`` marks of fenced workers.
    """

    runs: int
    states: Counter[str]
    lost: list[str] = field(default_factory=list)
    completed_twice: list[str] = field(default_factory=list)
    seq_gaps: list[str] = field(default_factory=list)
    stale_writes: list[str] = field(default_factory=list)
    duplicate_effects: list[str] = field(default_factory=list)
    effects: int = 0
    executions: int = 0
    reexecutions: int = 0
    max_attempt: int = 0
    retried_tasks: int = 0
    lease_lost: int = 0

    def counts(self) -> dict[str, int]:
        """The five numbers that must be 0."""
        return {
            "lost": len(self.lost),
            "completed_twice": len(self.completed_twice),
            "seq_gaps": len(self.seq_gaps),
            "stale_writes": len(self.stale_writes),
            "duplicate_effects": len(self.duplicate_effects),
        }

    def assert_clean(self) -> None:
        """Fail with every offender named unless all five counts are 0."""
        counts = self.counts()
        if any(counts.values()):
            details = {name: getattr(self, name)[:10] for name, n in counts.items() if n}
            raise AssertionError(f"chaos audit failed: {counts}; first offenders: {details}")

    def summary(self) -> str:
        """One line for the test log: the counts and the evidence."""
        return (
            f"runs={self.runs} states={dict(self.states)} counts={self.counts()} effects={self.effects} "
            f"executions={self.executions} reexecutions={self.reexecutions} max_attempt={self.max_attempt} "
            f"retried_tasks={self.retried_tasks} lease_lost={self.lease_lost}"
        )


def audit(sql: Sql, expected: Iterable[str] = ()) -> Audit:
    """Count, from the journal, everything a fault may have broken; ``expected``: run ids the test started."""
    states = {r.id: r.state for r in sql("SELECT id, state FROM continuum_runs")}
    result = Audit(runs=len(states), states=Counter(states.values()))
    result.lost = sorted(
        {f"{rid}:{states.get(rid, 'missing')}" for rid in expected if states.get(rid) not in TERMINAL_STATES}
        | {f"{rid}:{state}" for rid, state in states.items() if state not in TERMINAL_STATES}
    )
    result.completed_twice = [
        f"{r.run_id}:{r.n}"
        for r in sql(
            f"SELECT run_id, count(*) AS n FROM continuum_events WHERE kind IN {_in(TERMINAL_EVENTS)} "
            "GROUP BY run_id HAVING count(*) > 1"
        )
    ]
    result.seq_gaps = [
        f"{r.id}:n={r.n},lo={r.lo},hi={r.hi},last_seq={r.last_seq}"
        for r in sql(
            "SELECT r.id, r.last_seq, e.n, e.lo, e.hi FROM continuum_runs r LEFT JOIN "
            "(SELECT run_id, count(*) AS n, min(seq) AS lo, max(seq) AS hi FROM continuum_events GROUP BY run_id) e "
            "ON e.run_id = r.id WHERE e.n IS NULL OR e.lo <> 1 OR e.hi <> e.n OR r.last_seq <> e.hi"
        )
    ]
    result.stale_writes = _stale_writes(sql)
    _effects(sql, result)
    row = sql(
        "SELECT coalesce(max(attempt), 0) AS top, count(*) FILTER (WHERE attempt > 1) AS retried "
        "FROM continuum_activity_tasks"
    )[0]
    result.max_attempt, result.retried_tasks = row.top, row.retried
    result.lease_lost = sql("SELECT count(*) AS n FROM test_marks WHERE name LIKE 'lease_lost|%'")[0].n
    return result


def _stale_writes(sql: Sql) -> list[str]:
    found = []
    for label, kinds in (("command twice", COMMANDS), ("outcome twice", OUTCOMES)):
        found += [
            f"{label}:{r.run_id}#{r.command_id}x{r.n}"
            for r in sql(
                f"SELECT run_id, command_id, count(*) AS n FROM continuum_events WHERE kind IN {_in(kinds)} "
                "AND command_id IS NOT NULL GROUP BY run_id, command_id HAVING count(*) > 1"
            )
        ]
    found += [
        f"outcome without command:{r.run_id}@{r.seq}"
        for r in sql(
            f"SELECT o.run_id, o.seq FROM continuum_events o WHERE o.kind IN {_in(OUTCOMES)} "
            "AND o.command_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM continuum_events c "
            f"WHERE c.run_id = o.run_id AND c.command_id = o.command_id AND c.kind IN {_in(COMMANDS)} "
            "AND c.seq < o.seq)"
        )
    ]
    found += [
        f"after terminal:{r.run_id}@{r.seq}"
        for r in sql(
            "SELECT e.run_id, e.seq FROM continuum_events e JOIN (SELECT run_id, min(seq) AS t FROM continuum_events "
            f"WHERE kind IN {_in(TERMINAL_EVENTS)} GROUP BY run_id) x ON x.run_id = e.run_id WHERE e.seq > x.t"
        )
    ]
    return found


def _effects(sql: Sql, result: Audit) -> None:
    marks = sql(
        "SELECT split_part(name, '|', 2) AS key, split_part(name, '|', 3)::int AS attempt, count(*) AS n "
        "FROM test_marks WHERE name LIKE 'exec|%' GROUP BY 1, 2"
    )
    result.executions = sum(m.n for m in marks)
    result.reexecutions = sum(1 for m in marks if m.attempt > 1)
    result.duplicate_effects = [f"attempt ran {m.n}x:{m.key}#{m.attempt}" for m in marks if m.n > 1]
    result.duplicate_effects += [
        f"ran after completion:{r.key}#{r.attempt}"
        for r in sql(
            "SELECT split_part(m.name, '|', 2) AS key, split_part(m.name, '|', 3) AS attempt "
            "FROM test_marks m JOIN continuum_activity_tasks t ON t.idempotency_key = split_part(m.name, '|', 2) "
            "WHERE m.name LIKE 'exec|%' AND t.state = 'completed' AND m.at > t.finished_at"
        )
    ]
    result.effects = sql("SELECT count(*) AS n FROM test_effects WHERE key NOT LIKE 'hold|%'")[0].n


def marks(sql: Sql, prefix: str) -> list[list[str]]:
    """The ``test_marks`` rows starting with ``prefix|``, split on ``|``, oldest first."""
    return [
        r.name.split("|") for r in sql("SELECT name FROM test_marks WHERE name LIKE :p ORDER BY id", p=prefix + "|%")
    ]


def describe(sql: Sql, run_ids: Iterable[str]) -> list[str]:
    """Where each run stands: its row, last events, unfinished tasks and timers (for failure messages)."""
    lines = []
    for run_id in run_ids:
        row = sql(
            "SELECT state, stuck_reason, lease_token, lease_owner, lease_expires_at, next_wakeup_at, dispatched_at, "
            "wake_seq, last_seq, now() AS db_now FROM continuum_runs WHERE id = :r",
            r=run_id,
        )
        events = sql("SELECT seq, kind, command_id FROM continuum_events WHERE run_id = :r ORDER BY seq", r=run_id)
        tasks = sql(
            "SELECT command_id, state, attempt, retry_at, dispatched_at, lease_expires_at FROM "
            "continuum_activity_tasks WHERE run_id = :r AND state NOT IN ('completed', 'failed')",
            r=run_id,
        )
        timers = sql(
            "SELECT command_id, kind, state, fire_at FROM continuum_timers WHERE run_id = :r AND state = 'pending'",
            r=run_id,
        )
        inbox = sql("SELECT name, consumed_seq FROM continuum_signals WHERE run_id = :r", r=run_id)
        lines.append(
            f"{run_id}: {dict(row[0]._mapping) if row else 'missing'}; events {[tuple(e) for e in events[-4:]]}; "
            f"open tasks {[tuple(t) for t in tasks]}; pending timers {[tuple(t) for t in timers]}; "
            f"signals {[tuple(i) for i in inbox]}"
        )
    return lines


def wait_terminal(sql: Sql, run_ids: Iterable[str], timeout: float) -> None:
    """Wait until every run in ``run_ids`` is terminal; fail describing the stragglers after ``timeout`` s."""
    ids = list(run_ids)

    def left() -> list[str]:
        ended = sql(
            "SELECT id FROM continuum_runs WHERE id = ANY(:ids) AND state = ANY(:ended)",
            ids=ids,
            ended=list(TERMINAL_STATES),
        )
        return sorted(set(ids) - {r.id for r in ended})

    try:
        wait_until(lambda: not left(), timeout, f"{len(ids)} runs to end", interval=0.5)
    except AssertionError as exc:
        raise AssertionError("\n".join([str(exc), *describe(sql, left()[:5])])) from None
