"""``python -m bench --rss``: reading resident memory and judging its growth."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.config import BenchConfig
from bench.rss import Reading, parse_checkpoints, parse_vmrss_kib, render_rss, render_rss_header, sessions_rss_kib

STATUS = "Name:\tcelery\nVmPeak:\t  300000 kB\nVmRSS:\t   81234 kB\nThreads:\t4\n"


def test_vmrss_parsed_in_kib() -> None:
    assert parse_vmrss_kib(STATUS) == 81234
    assert parse_vmrss_kib("Name:\tkthreadd\nThreads:\t1\n") is None


def test_this_process_is_read_by_its_session() -> None:
    found = sessions_rss_kib({os.getsid(0)})
    assert found[os.getpid()] > 0
    assert sessions_rss_kib({-1}) == {}


def test_a_process_without_status_is_skipped(tmp_path: Path) -> None:
    stat = "12 (celery) S 1 12 12 0 -1 0 0 0 0 0 5 5 0 0 20 0 1 0 99 0 0"
    for pid in ("12", "13"):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "stat").write_text(stat.replace("12 (", f"{pid} (", 1))
    (tmp_path / "12" / "status").write_text(STATUS)
    assert sessions_rss_kib({12}, tmp_path) == {12: 81234}


class TestCheckpoints:
    def test_increasing_counts(self) -> None:
        assert parse_checkpoints("1000,10000") == (1000, 10000)
        assert parse_checkpoints("100, 500, 2000") == (100, 500, 2000)

    @pytest.mark.parametrize("text", ["1000", "1000,1000", "5000,1000", "0,10", "a,b"])
    def test_refused(self, text: str) -> None:
        with pytest.raises(ValueError):
            parse_checkpoints(text)


class TestRender:
    def test_growth_within_target(self) -> None:
        text = render_rss([Reading(1000, {1: 102400, 2: 102400}), Reading(10000, {1: 107520, 2: 107520})], "c")
        lines = text.splitlines()
        assert lines[0] == "c: RSS after   1000 runs:   200.0 MiB over 2 processes (100.0, 100.0 MiB)"
        assert lines[-1] == "c: RSS after 10000 / after 1000 runs: 1.050x   target <= 1.10x: met"

    def test_growth_past_target(self) -> None:
        text = render_rss([Reading(1000, {1: 100000}), Reading(10000, {1: 111000})], "c")
        assert text.splitlines()[-1].endswith("1.110x   target <= 1.10x: NOT MET")

    def test_nothing_read(self) -> None:
        text = render_rss([Reading(1000, {}), Reading(10000, {1: 5})], "c")
        assert text.splitlines()[-1] == "c: RSS growth n/a (no process read after 1000 runs)"

    def test_header_names_the_checkpoints(self) -> None:
        header = render_rss_header(BenchConfig(workflows=200), (1000, 10000), 2, 0.5)
        assert header.startswith("RSS of one continuum worker pool after 1,000, 10,000 runs: N=10 steps, 200 runs")
