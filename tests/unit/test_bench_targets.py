"""The benchmark's workloads and the ratio lines that hold continuum to the issue's targets."""

from __future__ import annotations

import pytest

from bench.report import Outcome, render_ratios, render_table
from bench.runner import Repetition
from bench.workloads import WORKLOADS, Target, parse_workloads


def _rep(steps_per_s: float, p50: float, cpu: float | None) -> Repetition:
    return Repetition(
        workflows_per_s=steps_per_s / 10,
        steps_per_s=steps_per_s,
        p50_ms=p50,
        p90_ms=p50,
        commits_per_step=1.0,
        write_xacts_per_step=1.0,
        wal_records_per_step=1.0,
        redis_cmds_per_step=1.0,
        cpu_ms_per_step=cpu,
        cpu_workers_ms_per_step=None if cpu is None else cpu / 2,
        cpu_pg_ms_per_step=None if cpu is None else cpu / 4,
        cpu_redis_ms_per_step=None if cpu is None else cpu / 4,
    )


def _line(text: str, title: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(title + ":"))


class TestTarget:
    def test_at_least_and_at_most(self) -> None:
        floor = Target("steps_per_s", "celery", True, 1.5)
        ceiling = Target("cpu_ms_per_step", "dbos", False, 0.5)
        assert floor.met(1.5) and floor.met(2.0) and not floor.met(1.49)
        assert ceiling.met(0.5) and ceiling.met(0.1) and not ceiling.met(0.51)
        assert floor.describe() == ">= 1.50x"
        assert ceiling.describe() == "<= 0.50x"

    def test_the_issue_targets(self) -> None:
        sequential = WORKLOADS["sequential"]
        assert sequential.target("steps_per_s", "dbos") == Target("steps_per_s", "dbos", True, 2.0)
        assert sequential.target("steps_per_s", "celery") == Target("steps_per_s", "celery", True, 1.5)
        assert sequential.target("cpu_ms_per_step", "dbos") == Target("cpu_ms_per_step", "dbos", False, 0.5)
        assert WORKLOADS["queued"].target("p50_ms", "celery") == Target("p50_ms", "celery", False, 1.5)
        assert WORKLOADS["fanout"].target("steps_per_s", "celery") == Target("steps_per_s", "celery", True, 1.0)
        assert WORKLOADS["timers"].targets == ()


class TestParseWorkloads:
    def test_order_kept_and_duplicates_dropped(self) -> None:
        assert parse_workloads("fanout, sequential,fanout") == ["fanout", "sequential"]

    @pytest.mark.parametrize("text", ["", " , ", "sequential,bursty"])
    def test_refuses_unknown_or_none(self, text: str) -> None:
        with pytest.raises(ValueError, match="known: sequential, queued, fanout, timers"):
            parse_workloads(text)


class TestRatioLines:
    def test_each_ratio_next_to_its_target(self) -> None:
        outcomes = [
            Outcome("celery", "Celery chain", [_rep(400.0, p50=30.0, cpu=3.0)]),
            Outcome("continuum", "continuum", [_rep(800.0, p50=30.0, cpu=2.0)]),
            Outcome("dbos", "DBOS", [_rep(500.0, p50=40.0, cpu=3.0)]),
        ]
        text = render_ratios(outcomes, WORKLOADS["sequential"])
        assert _line(text, "continuum/Celery steps/s").endswith("2.00x   target >= 1.50x: met")
        assert _line(text, "continuum/DBOS steps/s").endswith("1.60x   target >= 2.00x: NOT MET")
        assert _line(text, "continuum/DBOS CPU ms/step").endswith("0.67x   target <= 0.50x: NOT MET")
        assert _line(text, "continuum/Celery latency p50").endswith("1.00x")  # no target in sequential
        assert _line(text, "continuum/DBOS latency p50").endswith("0.75x")

    def test_a_target_that_cannot_be_checked_is_said_so(self) -> None:
        outcomes = [
            Outcome("celery", "Celery chain", [_rep(400.0, p50=30.0, cpu=None)]),
            Outcome("continuum", "continuum", [_rep(300.0, p50=45.0, cpu=2.0)]),
            Outcome("dbos", "DBOS", failed="worker died"),
        ]
        text = render_ratios(outcomes, WORKLOADS["queued"])
        assert _line(text, "continuum/Celery latency p50").endswith("1.50x   target <= 1.50x: met")
        assert _line(text, "continuum/Celery steps/s").endswith("0.75x   target >= 0.80x: NOT MET")
        assert _line(text, "continuum/Celery CPU ms/step").endswith("n/a (Celery chain has no cpu_ms_per_step)")
        assert _line(text, "continuum/DBOS steps/s").endswith("n/a (DBOS failed)")

    def test_a_skipped_system_gives_its_reason(self) -> None:
        outcomes = [
            Outcome("celery", "Celery chord", skipped="Celery+commit has only sequential"),
            Outcome("continuum", "continuum", [_rep(300.0, p50=45.0, cpu=2.0)]),
        ]
        line = _line(render_ratios(outcomes, WORKLOADS["fanout"]), "continuum/Celery steps/s")
        assert line.endswith(
            "n/a (Celery chord skipped: Celery+commit has only sequential)   target >= 1.00x: not measured"
        )

    def test_table_shows_the_cpu_split(self) -> None:
        table = render_table([Outcome("continuum", "continuum", [_rep(300.0, p50=45.0, cpu=2.0)])]).splitlines()
        assert table[0].split()[-4:] == ["ms/st*", "=workers", "+PG*", "+Redis*"]
        assert table[2].split()[-4:] == ["2.00", "1.00", "0.50", "0.50"]
