"""``continuum runs list`` and ``continuum runs show``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import click

from .cli_context import ContinuumGroup, operator
from .cli_format import (
    MAX_SQL_INT,
    ago,
    compact,
    cutoff,
    echo_json,
    heartbeat_text,
    jsonable,
    sql_count,
    stamp,
    table,
    when,
)
from .events import Kind
from .journal.records import RunRecord
from .journal.views import RunDetail, TimelineEntry
from .states import RUN_STATES

#: Most runs one ``runs list`` page may hold.
MAX_PAGE = 1000


def _short(name: str | None) -> str:
    """The last dotted part of an activity or workflow name (``shop.orders.charge`` -> ``charge``)."""
    return (name or "?").rsplit(".", 1)[-1]


def _error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return compact(error)
    return f"{error.get('type', 'Error')}: {error.get('message', '')}"


def _retry_text(e: TimelineEntry, p: dict[str, Any]) -> str:
    stuck = f" (cleared stuck: {p['stuck_reason']})" if p.get("stuck_reason") else ""
    moved = "".join(f"; {_short(a.get('activity'))} attempt {a.get('attempt')} now" for a in p.get("activities") or [])
    return f"retry requested by {p.get('by')}{stuck}{moved}"


def _wait_text(e: TimelineEntry, p: dict[str, Any]) -> str:
    until = f" until {p['timeout_at']}" if p.get("timeout_at") else ""
    return f"waiting for signal {e.name!r}{until}"


_Describe = Callable[[TimelineEntry, dict[str, Any]], str]

#: One readable line per event kind (a command's line is followed by its command number).
DESCRIPTIONS: dict[Kind, _Describe] = {
    Kind.RUN_STARTED: lambda e, p: f"started {p.get('workflow', '')} with input {compact(p.get('input'), 60)}",
    Kind.ACTIVITY_SCHEDULED: lambda e, p: f"scheduled {_short(e.name)}({compact(p.get('args', []), 50)[1:-1]})",
    Kind.ACTIVITY_COMPLETED: lambda e, p: f"{_short(e.name)} completed after {p.get('attempts')} attempt(s): "
    f"{compact(p.get('result'), 60)}",
    Kind.ACTIVITY_FAILED: lambda e, p: f"{_short(e.name)} failed after {p.get('attempts')} attempt(s): "
    f"{_error_text(p.get('error'))}",
    Kind.COMPENSATION_SCHEDULED: lambda e, p: f"scheduled compensation {_short(e.name)}",
    Kind.COMPENSATION_COMPLETED: lambda e, p: f"compensation {_short(e.name)} completed",
    Kind.COMPENSATION_FAILED: lambda e, p: f"compensation {_short(e.name)} failed: {_error_text(p.get('error'))}",
    Kind.TIMER_SCHEDULED: lambda e, p: f"sleeping until {p.get('fire_at')}",
    Kind.TIMER_FIRED: lambda e, p: "timer fired",
    Kind.SIGNAL_WAIT: _wait_text,
    Kind.SIGNAL_RECEIVED: lambda e, p: f"signal {e.name!r} received: {compact(p.get('payload'), 60)}",
    Kind.SIGNAL_TIMED_OUT: lambda e, p: f"signal {e.name!r} timed out",
    Kind.CHILD_STARTED: lambda e, p: f"started child {e.name} run {p.get('run_id')}",
    Kind.CHILD_COMPLETED: lambda e, p: f"child run {p.get('run_id')} completed: {compact(p.get('result'), 60)}",
    Kind.CHILD_FAILED: lambda e, p: f"child run {p.get('run_id')} failed: {_error_text(p.get('error'))}",
    Kind.CHILD_CANCELLED: lambda e, p: f"child run {p.get('run_id')} cancelled",
    Kind.SIDE_EFFECT: lambda e, p: f"{e.name}() = {compact(p.get('value'), 60)}",
    Kind.PATCH_MARKER: lambda e, p: f"patch {e.name!r} applied",
    Kind.CANCEL_REQUESTED: lambda e, p: "cancel requested",
    Kind.RUN_TIMED_OUT: lambda e, p: f"workflow timeout reached (deadline {p.get('deadline')})",
    Kind.RUN_COMPLETED: lambda e, p: f"completed: {compact(p.get('result'), 70)}",
    Kind.RUN_FAILED: lambda e, p: f"failed: {_error_text(p.get('error'))}",
    Kind.RUN_CANCELLED: lambda e, p: "cancelled",
    Kind.RUN_CONTINUED: lambda e, p: f"continued as new run {p.get('next_run_id')}",
    Kind.RETRY_REQUESTED: _retry_text,
}


def describe_event(e: TimelineEntry) -> str:
    """One readable line for a journal event."""
    try:
        describe = DESCRIPTIONS[Kind(e.kind)]
    except (ValueError, KeyError):  # a kind written by a newer release
        return f"{e.kind} {e.name or ''} {compact(e.payload, 60)}".strip()
    cmd = f" [cmd {e.command_id}]" if e.command_id is not None else ""
    return describe(e, e.payload) + cmd


def _record_json(run: RunRecord) -> dict[str, Any]:
    data: dict[str, Any] = jsonable(run)
    data["terminal"] = run.terminal
    return data


def _note(run: RunRecord) -> str:
    notes = []
    if run.stuck_reason:
        notes.append(f"stuck: {run.stuck_reason}")
    if run.cancel_requested and not run.terminal:
        notes.append("cancel requested")
    if run.parent_run_id:
        notes.append(f"child of {run.parent_run_id}")
    if run.continued_from_run_id:
        notes.append(f"continues {run.continued_from_run_id}")
    return "; ".join(notes)


@click.group(cls=ContinuumGroup)
def runs() -> None:
    """List runs and show one run's lineage and history."""


@runs.command("list")
@click.option("--workflow", "-w", help="Only runs of this workflow (its logical name).")
@click.option("--state", "-s", type=click.Choice(RUN_STATES), help="Only runs in this state.")
@click.option("--since", help="Only runs created within this age: 90s, 15m, 2h, 7d, 1h30m.")
@click.option("--limit", type=click.IntRange(1, MAX_PAGE), default=50, show_default=True, help="Runs per page.")
@click.option("--offset", type=sql_count(0), default=None, help="Skip this many runs (newest first).")
@click.option("--page", type=sql_count(1), default=None, help="Page number (1-based); instead of --offset.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def list_runs(
    ctx: click.Context,
    workflow: str | None,
    state: str | None,
    since: str | None,
    limit: int,
    offset: int | None,
    page: int | None,
    as_json: bool,
) -> None:
    """List runs, newest first."""
    if page is not None and offset is not None:
        raise click.UsageError("give --page or --offset, not both.")
    start = (page - 1) * limit if page is not None else (offset or 0)
    if start > MAX_SQL_INT:
        raise click.BadParameter(f"page {page} of {limit} runs starts past the last possible run.", param_hint="--page")
    now = datetime.now(timezone.utc)
    created_after = None
    if since:
        try:
            created_after = cutoff(since, now)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    found = operator(ctx).reader.list_runs(
        workflow=workflow, state=state, created_after=created_after, limit=limit, offset=start
    )
    next_offset = start + limit if len(found) == limit else None
    if as_json:
        echo_json(
            {"runs": [_record_json(r) for r in found], "offset": start, "limit": limit, "next_offset": next_offset}
        )
        return
    if not found:
        click.echo("no runs match." if start == 0 else f"no runs past offset {start}.")
        return
    rows = [(r.id, r.workflow, r.state, ago(r.created_at, now), ago(r.updated_at, now), _note(r)) for r in found]
    click.echo(table(("RUN", "WORKFLOW", "STATE", "AGE", "UPDATED", "NOTE"), rows))
    footer = f"runs {start + 1}-{start + len(found)}"
    if next_offset is not None:
        more = f"--page {page + 1}" if page is not None else f"--offset {next_offset}"
        footer += f"; more with {more}"
    click.echo(footer)


def _lineage_lines(detail: RunDetail) -> list[str]:
    lin = detail.lineage
    lines = []
    if lin.parent is not None:
        lines.append(f"  parent         {lin.parent.id} ({lin.parent.workflow}, {lin.parent.state})")
    for child in lin.children:
        lines.append(f"  child          {child.id} ({child.workflow}, {child.state})")
    if lin.continued_from is not None:
        lines.append(f"  continued from {lin.continued_from.id} ({lin.continued_from.state})")
    if lin.continued_to is not None:
        lines.append(f"  continued to   {lin.continued_to.id} ({lin.continued_to.state})")
    if lin.correlation_id != detail.run.id:
        lines.append(f"  correlation    {lin.correlation_id}")
    return lines or ["  (no parent, children or continuations)"]


def _show_human(detail: RunDetail) -> None:
    run, now = detail.run, datetime.now(timezone.utc)
    click.echo(f"run       {run.id}")
    click.echo(f"workflow  {run.workflow} v{run.version} (hash {run.version_hash})")
    click.echo(f"state     {run.state}" + (f" (stuck: {run.stuck_reason})" if run.stuck_reason else ""))
    click.echo(f"created   {when(run.created_at, now)}")
    click.echo(f"updated   {when(run.updated_at, now)}")
    if run.state == "running":
        click.echo(f"lease     held by {run.lease_owner} until {when(run.lease_expires_at, now)}")
    elif run.next_wakeup_at is not None and not run.terminal:
        click.echo(f"wakes     {when(run.next_wakeup_at, now)}")
    click.echo(f"input     {compact(run.input, 100)}")
    if run.state == "completed":
        click.echo(f"result    {compact(run.result, 100)}")
    if run.error:
        click.echo(f"error     {_error_text(run.error)}")
    click.echo("lineage")
    for line in _lineage_lines(detail):
        click.echo(line)
    if detail.attempts:
        click.echo("attempts")
        for a in detail.attempts:
            where = f" on {a.owner}, times out {when(a.deadline, now)}" if a.state == "running" else ""
            head = f"  {_short(a.activity)} attempt {a.attempt} of {a.max_attempts} {a.state}{where}"
            click.echo(head + heartbeat_text(a.heartbeat_at, a.last_heartbeat, now))
    first = detail.timeline[0].at if detail.timeline else run.created_at
    click.echo(f"history ({run.last_seq} events)")
    for e in detail.timeline:
        offset = (e.at - first).total_seconds()
        click.echo(f"  {e.seq:>4}  {stamp(e.at)}  {f'+{offset:.3f}s':>10}  {e.kind:<22} {describe_event(e)}")


@runs.command("show")
@click.argument("run_id")
@click.option("--last", type=sql_count(1), default=None, help="Only the last N events of the history.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def show_run(ctx: click.Context, run_id: str, last: int | None, as_json: bool) -> None:
    """Show a run: its state, lineage (parent, children, continuations) and history as a timeline."""
    detail = operator(ctx).reader.run_detail(run_id, max_events=last)
    if as_json:
        echo_json(
            {
                "run": _record_json(detail.run),
                "lineage": jsonable(detail.lineage),
                "attempts": jsonable(detail.attempts),
                "history": [{**jsonable(e), "text": describe_event(e)} for e in detail.timeline],
            }
        )
        return
    _show_human(detail)
