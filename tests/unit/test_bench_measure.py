"""The benchmark's pure helpers: percentiles, medians, deltas, ratios, table math."""

from __future__ import annotations

import pytest

from bench.measure import (
    commandstats_calls,
    delta,
    format_ratio,
    median,
    per_step,
    percentile,
    ratio,
)
from bench.report import Outcome, render_ratios, render_table
from bench.runner import Repetition
from bench.workloads import WORKLOADS


def _rep(steps_per_s: float, p50: float | None = 10.0, commits: float | None = 1.0) -> Repetition:
    return Repetition(
        workflows_per_s=steps_per_s / 10,
        steps_per_s=steps_per_s,
        p50_ms=p50,
        p90_ms=None if p50 is None else p50 * 2,
        commits_per_step=commits,
        write_xacts_per_step=commits,
        wal_records_per_step=None,
        redis_cmds_per_step=5.0,
    )


class TestPercentile:
    def test_interpolates_between_ranks(self) -> None:
        assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
        assert percentile([10, 20, 30, 40, 50], 90) == pytest.approx(46.0)

    def test_ignores_input_order(self) -> None:
        assert percentile([5, 1, 4, 2, 3], 50) == 3

    def test_bounds_are_min_and_max(self) -> None:
        values = [7.0, 3.0, 9.0]
        assert percentile(values, 0) == 3.0
        assert percentile(values, 100) == 9.0

    def test_single_value(self) -> None:
        assert percentile([42.0], 90) == 42.0

    def test_refuses_empty_and_out_of_range(self) -> None:
        with pytest.raises(ValueError):
            percentile([], 50)
        with pytest.raises(ValueError):
            percentile([1.0], 101)


class TestMedian:
    def test_odd_and_even(self) -> None:
        assert median([3.0, 1.0, 2.0]) == 2.0
        assert median([4.0, 1.0, 3.0, 2.0]) == 2.5

    def test_skips_missing_values(self) -> None:
        assert median([None, 5.0, None, 7.0]) == 6.0

    def test_nothing_present_is_none(self) -> None:
        assert median([]) is None
        assert median([None, None]) is None


class TestDelta:
    def test_subtracts_per_key(self) -> None:
        before = {"xact_commit": 100.0, "wal_records": 50.0}
        after = {"xact_commit": 130.0, "wal_records": 80.0}
        assert delta(before, after) == {"xact_commit": 30.0, "wal_records": 30.0}

    def test_key_missing_on_one_side_counts_as_zero(self) -> None:
        assert delta({"get": 2.0}, {"get": 5.0, "set": 4.0}) == {"get": 3.0, "set": 4.0}
        assert delta({"gone": 3.0}, {}) == {"gone": -3.0}

    def test_commandstats_parsed_into_calls(self) -> None:
        info = {
            "cmdstat_lpush": {"calls": 12, "usec": 30, "usec_per_call": 2.5},
            "cmdstat_brpop": {"calls": 7, "usec": 9},
            "errorstat_ERR": {"count": 1},
        }
        assert commandstats_calls(info) == {"lpush": 12.0, "brpop": 7.0}

    def test_commandstats_delta_sums_to_commands(self) -> None:
        before = commandstats_calls({"cmdstat_get": {"calls": 10}})
        after = commandstats_calls({"cmdstat_get": {"calls": 15}, "cmdstat_set": {"calls": 5}})
        assert sum(delta(before, after).values()) == 10.0


class TestRatios:
    def test_per_step(self) -> None:
        assert per_step(300.0, 100) == 3.0
        assert per_step(None, 100) is None
        assert per_step(5.0, 0) is None

    def test_ratio(self) -> None:
        assert ratio(300.0, 600.0) == 0.5
        assert ratio(None, 600.0) is None
        assert ratio(300.0, None) is None
        assert ratio(300.0, 0.0) is None

    def test_format_ratio(self) -> None:
        assert format_ratio(0.756) == "0.76x"
        assert format_ratio(None) == "n/a"
        assert format_ratio(None, "DBOS skipped") == "n/a (DBOS skipped)"


class TestReport:
    def test_summary_is_median_per_figure(self) -> None:
        outcome = Outcome("celery", "Celery", [_rep(100.0), _rep(300.0), _rep(200.0, p50=None)])
        summary = outcome.summary()
        assert summary is not None
        assert summary.steps_per_s == 200.0
        assert summary.p50_ms == 10.0

    def test_ratios_from_the_same_run(self) -> None:
        outcomes = [
            Outcome("celery", "Celery", [_rep(600.0, p50=20.0)]),
            Outcome("continuum", "continuum", [_rep(300.0, p50=50.0)]),
            Outcome("dbos", "DBOS", skipped="dbos not importable"),
        ]
        lines = render_ratios(outcomes, WORKLOADS["timers"]).splitlines()
        assert [line.split(":")[0] for line in lines] == [
            "continuum/Celery steps/s",
            "continuum/Celery latency p50",
            "continuum/Celery CPU ms/step",
            "continuum/DBOS steps/s",
            "continuum/DBOS latency p50",
            "continuum/DBOS CPU ms/step",
        ]
        assert lines[0].endswith("0.50x")
        assert lines[1].endswith("2.50x")
        assert lines[3].endswith("n/a (DBOS skipped: dbos not importable)")

    def test_table_marks_figures_of_a_system_that_failed_later(self) -> None:
        outcomes = [Outcome("continuum", "continuum", [_rep(80.0)], failed="run timed out")]
        assert render_table(outcomes).splitlines()[2].startswith("continuum (partial)")

    def test_table_lists_only_systems_with_figures(self) -> None:
        outcomes = [
            Outcome("celery", "Celery", [_rep(600.0, commits=None)]),
            Outcome("continuum", "continuum", failed="worker exited"),
        ]
        table = render_table(outcomes).splitlines()
        assert len(table) == 3
        assert table[2].startswith("Celery")
        assert "600.0" in table[2]
        assert "-" in table[2].split()  # commits per step unknown
