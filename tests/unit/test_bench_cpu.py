"""CPU accounting of the benchmark: /proc parsing, the per-process ledger, PostgreSQL roles, the split."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.cpu import CpuSplit, Ledger, parse_stat, pg_role, redis_cpu_s, scan_processes, ticks_to_ms

# A real line of /proc/<pid>/stat (a PostgreSQL backend), fields 1-52.
BACKEND_STAT = (
    "9279 (postgres) S 2206 9279 9279 0 -1 4194624 1510 0 0 0 85 12 0 0 20 0 1 0 4331 "
    "225644544 6560 18446744073709551615 1 1 0 0 0 0 0 4194304 8 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0"
)


class TestParseStat:
    def test_reads_the_fields_the_accounting_needs(self) -> None:
        stat = parse_stat(BACKEND_STAT)
        assert (stat.pid, stat.ppid, stat.session) == (9279, 2206, 9279)
        assert stat.ticks == 85 + 12  # utime + stime, not the children's times
        assert stat.start == 4331
        assert stat.key == (9279, 4331)

    def test_command_names_with_spaces_and_parentheses(self) -> None:
        line = BACKEND_STAT.replace("(postgres)", "(celery (worker) x)")
        stat = parse_stat(line)
        assert (stat.ppid, stat.ticks, stat.start) == (2206, 97, 4331)

    def test_children_times_are_left_out(self) -> None:
        fields = BACKEND_STAT.split()
        fields[15], fields[16] = "500", "400"  # cutime, cstime (fields 16 and 17)
        assert parse_stat(" ".join(fields)).ticks == 97

    @pytest.mark.parametrize("line", ["", "9279 postgres S 1 2 3", "9279 (postgres) S 1 2 3"])
    def test_refuses_what_is_not_a_stat_line(self, line: str) -> None:
        with pytest.raises(ValueError):
            parse_stat(line)

    def test_this_process_is_found_in_its_session(self) -> None:
        me = next(s for s in scan_processes() if s.pid == os.getpid())
        assert me.session == os.getsid(0)
        assert me.ppid == os.getppid()

    def test_scan_skips_unreadable_and_foreign_entries(self, tmp_path: Path) -> None:
        (tmp_path / "12").mkdir()
        (tmp_path / "12" / "stat").write_text(BACKEND_STAT.replace("9279 (", "12 (", 1))
        (tmp_path / "13").mkdir()  # ended between listing and reading: no stat file
        (tmp_path / "self").mkdir()
        (tmp_path / "14").mkdir()
        (tmp_path / "14" / "stat").write_text("garbage")
        assert [s.pid for s in scan_processes(tmp_path)] == [12]


class TestLedger:
    def test_counts_from_the_baseline(self) -> None:
        ledger = Ledger()
        ledger.observe((1, 100), 50, baseline=True)
        ledger.observe((1, 100), 80, baseline=False)
        ledger.observe((1, 100), 120, baseline=False)
        assert ledger.ticks() == 70

    def test_a_process_born_during_the_phase_counts_from_zero(self) -> None:
        ledger = Ledger()
        ledger.observe((1, 100), 50, baseline=True)
        ledger.observe((2, 900), 30, baseline=False)
        ledger.observe((2, 900), 45, baseline=False)
        assert ledger.ticks() == 45
        assert ledger.processes() == 2

    def test_a_reused_pid_is_another_process(self) -> None:
        ledger = Ledger()
        ledger.observe((7, 100), 500, baseline=True)
        ledger.observe((7, 100), 520, baseline=False)
        ledger.observe((7, 300), 10, baseline=False)  # pid 7 again, started later
        assert ledger.ticks() == 20 + 10

    def test_ticks_to_ms(self) -> None:
        assert ticks_to_ms(250, 100) == 2500.0
        assert ticks_to_ms(0, 100) == 0.0


class TestPgRole:
    def test_backends_of_the_benchmark_database_are_ours(self) -> None:
        assert pg_role("continuum_bench", "client backend", "continuum_bench") == "ours"
        assert pg_role("continuum_bench", "autovacuum worker", "continuum_bench") == "ours"

    def test_background_processes_serve_the_whole_server(self) -> None:
        for kind in ("walwriter", "checkpointer", "background writer", "autovacuum launcher"):
            assert pg_role(None, kind, "continuum_bench") == "server"

    def test_other_databases_are_left_out(self) -> None:
        assert pg_role("postgres", "client backend", "continuum_bench") is None
        assert pg_role("continuum_test", "autovacuum worker", "continuum_bench") is None


class TestRedisAndSplit:
    def test_redis_cpu_sums_threads_and_children(self) -> None:
        info = {
            "used_cpu_sys": 3.25,
            "used_cpu_user": 2.5,
            "used_cpu_sys_children": 0.25,
            "used_cpu_user_children": 0.0,
            "used_cpu_sys_main_thread": 3.0,  # part of used_cpu_sys already
        }
        assert redis_cpu_s(info) == pytest.approx(6.0)

    def test_split_per_step(self) -> None:
        split = CpuSplit(workers_ms=3000.0, pg_ms=1000.0, redis_ms=200.0).per_step(1000)
        assert (split.workers_ms, split.pg_ms, split.redis_ms) == (3.0, 1.0, 0.2)
        assert split.total_ms == pytest.approx(4.2)

    def test_total_unknown_when_a_part_is(self) -> None:
        split = CpuSplit(workers_ms=3000.0, pg_ms=None, redis_ms=200.0)
        assert split.total_ms is None
        assert split.per_step(10).pg_ms is None

    def test_split_refuses_no_steps(self) -> None:
        with pytest.raises(ValueError):
            CpuSplit(1.0, 1.0, 1.0).per_step(0)
