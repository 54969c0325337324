"""Medians across repetitions, the results table and the ratio lines, one set per workload."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from bench.config import BenchConfig
from bench.measure import format_ratio, median, ratio
from bench.runner import Repetition
from bench.workloads import Workload

COLUMNS = (
    ("wf/s", "workflows_per_s", "{:.1f}"),
    ("steps/s", "steps_per_s", "{:.1f}"),
    ("p50 ms", "p50_ms", "{:.1f}"),
    ("p90 ms", "p90_ms", "{:.1f}"),
    ("commits/st", "commits_per_step", "{:.2f}"),
    ("writes/st*", "write_xacts_per_step", "{:.2f}"),
    ("WAL/st*", "wal_records_per_step", "{:.2f}"),
    ("Redis/st*", "redis_cmds_per_step", "{:.2f}"),
    ("CPU ms/st*", "cpu_ms_per_step", "{:.2f}"),
    ("=workers", "cpu_workers_ms_per_step", "{:.2f}"),
    ("+PG*", "cpu_pg_ms_per_step", "{:.2f}"),
    ("+Redis*", "cpu_redis_ms_per_step", "{:.2f}"),
)
#: The figures compared in the ratio lines: attribute, title.
RATIO_FIGURES = (("steps_per_s", "steps/s"), ("p50_ms", "latency p50"), ("cpu_ms_per_step", "CPU ms/step"))
RATIO_OTHERS = (("celery", "Celery"), ("dbos", "DBOS"))


@dataclass
class Outcome:
    """What happened to one system: its repetitions, or why it has none."""

    name: str
    label: str
    repetitions: list[Repetition] = field(default_factory=list)
    skipped: str | None = None
    failed: str | None = None

    def summary(self) -> Repetition | None:
        """Per-figure medians across repetitions, or None if there are none."""
        if not self.repetitions:
            return None
        medians = {f.name: median(getattr(r, f.name) for r in self.repetitions) for f in fields(Repetition)}
        return Repetition(**medians)  # type: ignore[arg-type]


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def render_table(outcomes: list[Outcome]) -> str:
    """The results table, one line per system that produced figures."""
    header = ["system", *(title for title, _, _ in COLUMNS)]
    rows = []
    for outcome in outcomes:
        summary = outcome.summary()
        if summary is None:
            continue
        label = f"{outcome.label} (partial)" if outcome.failed else outcome.label
        rows.append([label, *(_cell(getattr(summary, attr), fmt) for _, attr, fmt in COLUMNS)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(row) for row in rows] or ["(no system produced figures)"]
    return "\n".join(out)


def _figure(outcomes: dict[str, Outcome], name: str, attr: str) -> tuple[float | None, str]:
    outcome = outcomes.get(name)
    if outcome is None:
        return None, f"{name} not run"
    if outcome.skipped:
        return None, f"{outcome.label} skipped: {outcome.skipped}"
    if outcome.failed:
        return None, f"{outcome.label} failed"
    summary = outcome.summary()
    if summary is None:
        return None, f"{outcome.label} has no figures"
    value = getattr(summary, attr)
    return value, "" if value is not None else f"{outcome.label} has no {attr}"


def render_ratios(outcomes: list[Outcome], workload: Workload) -> str:
    """continuum/Celery and continuum/DBOS ratios, each next to its target if the issue sets one.

    A ratio that cannot be computed shows ``n/a`` with the reason; a target it
    misses says ``not met`` (and one it cannot be checked against, ``not measured``).
    """
    by_name = {o.name: o for o in outcomes}
    lines = []
    for other, other_title in RATIO_OTHERS:
        for attr, figure_title in RATIO_FIGURES:
            mine, why_mine = _figure(by_name, "continuum", attr)
            theirs, why_theirs = _figure(by_name, other, attr)
            value = ratio(mine, theirs)
            reason = why_mine or why_theirs or ("" if value is not None else "zero denominator")
            line = f"{f'continuum/{other_title} {figure_title}:':34} {format_ratio(value, reason)}"
            target = workload.target(attr, other)
            if target is not None:
                verdict = "not measured" if value is None else ("met" if target.met(value) else "NOT MET")
                line += f"   target {target.describe()}: {verdict}"
            lines.append(line)
    return "\n".join(lines)


def render_workload_title(workload: Workload) -> str:
    """The line above a workload's table."""
    return f"== {workload.name}: {workload.description} =="


def render_header(cfg: BenchConfig, cores: int | None, load: float | None = None) -> str:
    """One line naming the settings every figure below was measured with (the workload aside).

    ``load`` is the 1-minute load average at the start: figures taken while
    other work keeps the machine busy are not comparable with quiet ones.
    """
    load_text = "" if load is None else f", load {load:.2f}"
    return (
        f"N={cfg.steps} steps, W={cfg.workflows} workflows at once, worker concurrency "
        f"{cfg.concurrency}, {cfg.repetitions} repetition(s) (medians), "
        f"{cfg.latency_runs} latency runs, {cores or '?'} cores{load_text}, "
        f"database {cfg.db_name}, Redis {cfg.redis_url}"
    )


FOOTNOTE = (
    "/st: per step. commits: every transaction committed in the benchmark database, read-only ones"
    " included.\nCPU ms/st = workers (worker processes, their children, the driver) + PG (backends"
    " of the benchmark database and the server's own processes) + Redis, over the throughput phase"
    " only.\n* server-wide: writes (transaction ids taken) and WAL records count the whole PostgreSQL"
    " cluster; PG CPU includes\n  the server's WAL writer, checkpointer and postmaster; Redis commands"
    " and CPU count the whole Redis server"
)
