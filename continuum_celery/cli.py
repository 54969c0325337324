"""The ``continuum`` command, also ``celery -A app continuum ...`` (Celery's ``celery.commands`` entry point).

Human output by default, ``--json`` for scripts; exit codes are listed in
:mod:`continuum_celery.cli_context` (0 done, 1 no / not found / needs attention,
2 usage, 3 database or broker unavailable).
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
from typing import Any

import click

from .cli_context import EXIT_FAILED, CommandFailed, ContinuumGroup, Operator, operator
from .cli_format import compact, echo_json, sql_count
from .cli_runs import runs
from .cli_versions import replay_check, versions
from .errors import RunFinished
from .ids import validate_run_id, validate_signal_name
from .serialization import MAX_INT_DIGITS, check_json, roundtrip


@click.group(name="continuum", cls=ContinuumGroup)
@click.option(
    "-A",
    "--app",
    "app_ref",
    envvar="CONTINUUM_APP",
    metavar="MODULE[:APP]",
    help="The Celery app with Continuum installed (its settings and broker). Env: CONTINUUM_APP.",
)
@click.option("--database-url", metavar="URL", help="Journal URL; overrides the app's settings and the environment.")
@click.pass_context
def main(ctx: click.Context, app_ref: str | None, database_url: str | None) -> None:
    """Durable workflows for Celery: operate the journal and its runs.

    Exit codes: 0 done; 1 not found, finished, refused, or doctor found a run needing
    attention; 2 bad usage; 3 database or broker unavailable.
    """
    celery_ctx = ctx.obj  # `celery -A app continuum ...` hands over its CLIContext, which holds the app
    ctx.obj = Operator(app_ref or getattr(celery_ctx, "app", None), database_url)
    ctx.call_on_close(ctx.obj.close)


main.add_command(runs)


def _warn(message: str | None) -> None:
    if message:
        click.echo(f"warning: {message}", err=True)


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade continuum's tables (safe to run on every deploy)."""
    from .journal.schema import migrate as apply

    head = apply(operator(ctx).settings.database_url)
    click.echo(f"journal at revision {head}")


def _parse_payload(text: str) -> Any:
    """The JSON value of a PAYLOAD argument; text that does not parse is bad usage (exit 2)."""
    shown = repr(text) if len(text) <= 60 else f"{text[:60]!r}... ({len(text)} characters)"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"is not JSON ({exc}); quote it, e.g. '{{\"ok\": true}}'"
    except RecursionError:
        problem = "is nested too deeply to parse; a payload may nest at most 200 levels"
    except ValueError:  # the only other refusal of json.loads: an int over Python's int-str digit limit
        problem = f"holds an int of more than {MAX_INT_DIGITS} digits; send it as a string"
    raise click.BadParameter(f"{shown} {problem}.", param_hint="PAYLOAD")


@main.command()
@click.argument("run_id")
@click.argument("name")
@click.argument("payload", default="null")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def signal(ctx: click.Context, run_id: str, name: str, payload: str, as_json: bool) -> None:
    """Send signal NAME with a JSON PAYLOAD (default null) to run RUN_ID."""
    op = operator(ctx)
    validate_run_id(run_id)
    validate_signal_name(name)
    value = _parse_payload(payload)
    check_json(value, f"payload of signal {name!r}", op.settings.max_payload_bytes)
    warning = op.dispatch(op.journal.send_signal(run_id, name, roundtrip(value)))
    _warn(warning)
    if as_json:
        echo_json({"run_id": run_id, "signal": name, "payload": value, "delivered": True, "dispatched": not warning})
    else:
        click.echo(f"signal {name!r} stored in the inbox of run {run_id}: {compact(value)}")


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def cancel(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Ask run RUN_ID (and its children) to stop at its next step."""
    op = operator(ctx)
    run = op.journal.get_run(validate_run_id(run_id))
    if run.state == "cancelled":
        message, warning = f"run {run_id} is already cancelled.", None
    else:
        warning = op.dispatch(op.journal.request_cancel(run_id))
        again = " (it was already requested)" if run.cancel_requested else ""
        message = f"cancel requested for run {run_id} ({run.workflow}){again}; it stops at its next step."
    _warn(warning)
    if as_json:
        echo_json({"run_id": run_id, "cancel_requested": True, "state": op.journal.get_run(run_id).state})
    else:
        click.echo(message)


def _operator_name() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@main.command()
@click.argument("run_id")
@click.option("--by", default=None, help="Who asks, for the audit event (default: user@host).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def retry(ctx: click.Context, run_id: str, by: str | None, as_json: bool) -> None:
    """Resume a stuck run after a fix, and run now any activity attempt waiting out a back-off.

    Clears a stuck reason (unknown version, nondeterminism), dispatches a replay step and
    records a ``retry_requested`` event naming who asked. A finished run never changes
    state: to run a failed run's work again, start a new run with the same input.
    """
    op = operator(ctx)
    run = op.journal.get_run(validate_run_id(run_id))
    if run.terminal:
        hint = (
            " Fix the cause, then start a new run with the same input (`continuum runs show "
            f"{run_id} --json` prints it)."
            if run.state == "failed"
            else ""
        )
        raise CommandFailed(f"run {run_id} is {run.state}; a finished run never changes state.{hint}")
    if run.state == "running":
        raise CommandFailed(
            f"run {run_id} is running now (lease held by {run.lease_owner}); nothing to retry. "
            "`continuum doctor` tells whether that worker is alive.",
        )
    who = by or _operator_name()
    try:
        dispatches = op.journal.request_retry(run_id, who)
    except RunFinished as exc:  # it ended meanwhile
        raise CommandFailed(str(exc)) from exc
    hurried = [d.label for d in dispatches if d.kind == "activity"]
    _warn(op.dispatch(dispatches))
    if as_json:
        echo_json({"run_id": run_id, "by": who, "cleared": run.stuck_reason, "activities": hurried})
        return
    done = [f"cleared stuck reason {run.stuck_reason!r}"] if run.stuck_reason else []
    done += [f"{name} runs its next attempt now" for name in hurried]
    click.echo(f"retry of run {run_id} recorded (by {who}); " + "; ".join([*done, "replay step dispatched"]) + ".")


@main.command()
@click.argument("run_ids", nargs=-1)
@click.option("--limit", type=sql_count(1), default=500, show_default=True, help="Most runs to examine.")
@click.option(
    "--ping-timeout",
    type=click.FloatRange(0.1, 30),
    default=1.0,
    show_default=True,
    help="Seconds to wait for workers to answer `inspect ping`.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def doctor(ctx: click.Context, run_ids: tuple[str, ...], limit: int, ping_timeout: float, as_json: bool) -> None:
    """Explain why each unfinished run (or each RUN_ID given) is not progressing.

    Exits 1 when a run needs attention: stuck on an unknown version or nondeterminism,
    held by a worker that is not alive, an attempt past its deadline or heartbeat timeout,
    or waiting on a version or a queue no live worker has.
    """
    from .doctor import diagnose_open_runs, diagnose_runs
    from .routing import base_queue
    from .worker_probe import QueueNames, WorkerProbe

    op = operator(ctx)
    journal = op.reader
    engine = op.broker_engine
    queues = QueueNames(base_queue(engine.app, engine.settings.queue), engine.settings.version_routing)
    probe = WorkerProbe(engine.app, timeout=ping_timeout, queues=queues)
    found = (
        diagnose_runs(journal, probe, [validate_run_id(r) for r in run_ids])
        if run_ids
        else diagnose_open_runs(journal, probe, limit)
    )
    if as_json:
        echo_json({"runs": [d.to_json() for d in found], "liveness_error": probe.error})
    else:
        if probe.error:
            click.echo(f"note: worker liveness unknown ({probe.error})")
        if not found:
            click.echo("no unfinished runs.")
        for d in found:
            flag = "  [needs attention]" if d.attention else ""
            click.echo(f"{d.run_id}  {d.workflow}  {d.state}{flag}")
            for reason in d.reasons:
                click.echo(f"  - {reason.message}")
    if any(d.attention for d in found):
        ctx.exit(EXIT_FAILED)


@main.command()
@click.option(
    "--database-url",
    "demo_db",
    envvar="CONTINUUM_DATABASE_URL",
    default=None,
    help="Journal URL (env CONTINUUM_DATABASE_URL; default: a fresh SQLite file).",
)
@click.option(
    "--redis-url",
    envvar="CONTINUUM_REDIS_URL",
    default=None,
    help="Redis for wake-ups (env CONTINUUM_REDIS_URL; default: in-process).",
)
@click.option("--keep", is_flag=True, help="Keep the temporary SQLite journal (its path is printed) to look closer.")
@click.pass_context
def demo(ctx: click.Context, demo_db: str | None, redis_url: str | None, keep: bool) -> None:
    """Run the example workflows on an in-process worker (no servers needed)."""
    from .demo import run_demo

    explicit: Any = ctx.find_object(Operator)
    database_url = demo_db or (explicit.explicit_database_url if explicit is not None else None)
    sys.exit(run_demo(database_url, redis_url, echo=click.echo, keep=keep))


#: ``celery -A app continuum ...``: Celery adds this group as a subcommand (``celery.commands`` entry point).
celery_command = main

# Commands defined in their own modules join the group here.
main.add_command(versions)
main.add_command(replay_check)
