"""Medians across repetitions, the results table and the ratio lines."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from bench.config import BenchConfig
from bench.measure import format_ratio, median, ratio
from bench.runner import Repetition

COLUMNS = (
    ("workflows/s", "workflows_per_s", "{:.1f}"),
    ("steps/s", "steps_per_s", "{:.1f}"),
    ("p50 ms", "p50_ms", "{:.1f}"),
    ("p90 ms", "p90_ms", "{:.1f}"),
    ("PG commits/step", "commits_per_step", "{:.2f}"),
    ("PG writes/step*", "write_xacts_per_step", "{:.2f}"),
    ("WAL rec/step*", "wal_records_per_step", "{:.2f}"),
    ("Redis cmds/step*", "redis_cmds_per_step", "{:.2f}"),
)


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
        return None, f"{outcome.label} skipped"
    if outcome.failed:
        return None, f"{outcome.label} failed"
    summary = outcome.summary()
    if summary is None:
        return None, f"{outcome.label} has no figures"
    value = getattr(summary, attr)
    return value, "" if value is not None else f"{outcome.label} has no {attr}"


def render_ratios(outcomes: list[Outcome]) -> str:
    """continuum/Celery and continuum/DBOS ratios, ``n/a`` with a reason when not computable."""
    by_name = {o.name: o for o in outcomes}
    lines = []
    for title, other, attr in (
        ("continuum/Celery steps/s", "celery", "steps_per_s"),
        ("continuum/DBOS steps/s", "dbos", "steps_per_s"),
        ("continuum/Celery latency p50", "celery", "p50_ms"),
    ):
        mine, why_mine = _figure(by_name, "continuum", attr)
        theirs, why_theirs = _figure(by_name, other, attr)
        value = ratio(mine, theirs)
        reason = why_mine or why_theirs or ("" if value is not None else "zero denominator")
        lines.append(f"{title + ':':32} {format_ratio(value, reason)}")
    return "\n".join(lines)


def render_header(cfg: BenchConfig, cores: int | None, load: float | None = None) -> str:
    """One line naming the settings every figure below was measured with.

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
    "PG commits: every transaction committed in the benchmark database, read-only ones"
    " included;\n* server-wide counters: writes (transaction ids taken) and WAL records count"
    " the whole PostgreSQL cluster, Redis commands the whole server"
)
