"""``continuum versions`` and ``continuum replay-check``: what each version still serves, and whether new code
can still replay what is stored."""

from __future__ import annotations

import importlib
from datetime import datetime, timedelta, timezone
from typing import Any

import click

from .cli_context import EXIT_FAILED, BadInput, operator
from .cli_format import ago, echo_json, sql_count, table
from .journal.version_rules import STOPPED_AT
from .replay_check import DEFAULT_LIMIT, History, check_histories, load_histories, read_histories
from .versioning import registry as workflow_registry


def _workers(entry: dict[str, Any], live_after: datetime) -> list[dict[str, Any]]:
    """Per-host rows of a ``list_versions`` entry (older adapters give only hostnames and one last-seen time)."""
    workers = entry.get("workers")
    if workers is None:
        workers = [{"hostname": h, "last_seen_at": entry.get("last_seen_at")} for h in entry.get("hostnames", [])]
    return [
        {
            **w,
            "live": w.get("last_seen_at") is not None and w["last_seen_at"] >= live_after,
            "stopped": w.get("last_seen_at") == STOPPED_AT,  # shut down cleanly
        }
        for w in sorted(workers, key=lambda w: str(w["hostname"]))
    ]


def _liveness(worker: dict[str, Any], now: datetime) -> str:
    if worker["stopped"]:
        return "stopped"
    return f"{'live' if worker['live'] else 'gone'}, seen {ago(worker['last_seen_at'], now)} ago"


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def versions(ctx: click.Context, as_json: bool) -> None:
    """List workflow versions: hash, version number, workers that have them, runs pinned to them.

    A version whose unfinished runs number 0, and that is not the newest of its workflow,
    can be deleted from the code. Runs pinned to a version that no live worker has wait,
    suspended, until a worker with that code starts. ``versions prune`` removes the queues of
    versions nothing needs any more.
    """
    if ctx.invoked_subcommand is not None:
        return
    op = operator(ctx)
    now = datetime.now(timezone.utc)
    live_after = now - timedelta(seconds=op.settings.version_ttl)
    entries = []
    for e in op.reader.list_versions():
        workers = _workers(e, live_after)
        entries.append({**e, "workers": workers, "live": any(w["live"] for w in workers)})
    entries.sort(key=lambda e: (e["workflow"], e["version"] is None, e["version"] or 0, e["version_hash"]))
    newest: dict[str, int] = {}
    for e in entries:
        if e["version"] is not None:
            newest[e["workflow"]] = max(newest.get(e["workflow"], 0), e["version"])
    for e in entries:
        e["removable"] = e["pinned_runs"] == 0 and e["version"] is not None and e["version"] < newest[e["workflow"]]
    if as_json:
        echo_json({"versions": entries})
        return
    if not entries:
        click.echo("no workflow versions recorded yet: workers record theirs when they start.")
        return
    rows = []
    for e in entries:
        seen = ", ".join(f"{w['hostname']} ({_liveness(w, now)})" for w in e["workers"])
        version = "?" if e["version"] is None else e["version"]
        rows.append([e["workflow"], version, e["version_hash"], e["pinned_runs"], seen or "none"])
    click.echo(table(["WORKFLOW", "VERSION", "HASH", "UNFINISHED RUNS", "WORKERS"], rows))
    for e in entries:
        if e["pinned_runs"] and not e["live"]:
            click.echo(
                f"! {e['pinned_runs']} unfinished run(s) of {e['workflow']} are pinned to {e['version_hash']}, "
                "which no live worker has: they wait until a worker with that code starts."
            )
        elif e["removable"]:
            click.echo(
                f"- {e['workflow']} version {e['version']} ({e['version_hash']}) has no unfinished runs: "
                "its code can be removed."
            )


@versions.command("prune")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def prune(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Remove the broker queues and registry rows of versions nothing needs (safe on every deploy).

    A version goes when no unfinished run is pinned to it and no live worker serves it (none
    refreshed it within version_ttl, or each stopped cleanly). A queue a worker consumes is
    never deleted; a worker with that code that starts again declares its queue anew.
    """
    from .pruning import WOULD_REMOVE, prune_versions
    from .routing import base_queue

    op = operator(ctx)
    engine = op.broker_engine
    base = base_queue(engine.app, op.settings.queue)
    pruned = prune_versions(op.journal, engine.app, base, live_within=op.settings.version_ttl, dry_run=dry_run)
    if as_json:
        echo_json({"dry_run": dry_run, "versions": [p.to_json() for p in pruned]})
        return
    if not pruned:
        click.echo("nothing to prune: every recorded version has a live worker or unfinished runs.")
        return
    rows = [
        [p.workflow, p.version_hash, p.queue, "?" if p.messages is None else p.messages, p.note] for p in pruned
    ]
    click.echo(table(["WORKFLOW", "HASH", "QUEUE", "MESSAGES", "WHAT"], rows))
    if dry_run:
        click.echo(f"would remove {sum(p.note == WOULD_REMOVE for p in pruned)} version(s); nothing was changed.")
    else:
        click.echo(f"removed {sum(p.removed for p in pruned)} version(s): their queues and registry rows.")


@click.command("replay-check")
@click.option(
    "--database-url",
    "check_db",
    metavar="URL",
    help="Read histories from this journal (read-only). Default: the journal of `continuum --database-url`, "
    "the app's settings or CONTINUUM_DATABASE_URL.",
)
@click.option(
    "--from-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Read histories from a JSON file written by continuum_celery.replay_check.export_history.",
)
@click.option("--workflow", help="Only runs of this workflow.")
@click.option("--limit", type=sql_count(1), default=DEFAULT_LIMIT, show_default=True, help="Newest runs read.")
@click.option(
    "-m",
    "--module",
    "modules",
    multiple=True,
    help="Import this module for its @workflow definitions (repeatable); also the app's workflow modules.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def replay_check(
    ctx: click.Context,
    check_db: str | None,
    from_file: str | None,
    workflow: str | None,
    limit: int,
    modules: tuple[str, ...],
    as_json: bool,
) -> None:
    """Replay stored histories against the current code; report every run it no longer reproduces.

    Writes nothing. A run fails when the code issues other commands than its history holds
    (nondeterminism), ends differently from a finished run, or when an unfinished run is
    pinned to a version the code does not load. Finished runs of versions the code no longer
    has are skipped. Exits 1 when any run fails: run it in CI before a deploy.
    """
    op = operator(ctx)
    if check_db and from_file:
        raise BadInput("give either --database-url or --from-file, not both.")
    _load_definitions(op, modules)
    histories: list[History]
    if from_file:
        histories = [h for h in load_histories(from_file) if not workflow or h.run.get("workflow") == workflow]
        histories = histories[:limit]
    else:
        histories = read_histories(check_db or op.settings.database_url, workflow=workflow, limit=limit)
    report = check_histories(histories)
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(report.format())
    if not report.ok:
        ctx.exit(EXIT_FAILED)


def _load_definitions(op: Any, modules: tuple[str, ...]) -> None:
    """Import the workflow modules the check replays with; refuse to check against no code at all."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise BadInput(f"cannot import --module {name!r}: {exc}. Check the name and PYTHONPATH.") from exc
    if op.app is not None:
        op.app.loader.import_default_modules()
        if op.engine is not None:
            op.engine.load_workflow_modules()
    if not workflow_registry.definitions():
        raise BadInput(
            "no @workflow definitions are loaded, so nothing can be replayed: pass --module your.workflows "
            "(repeatable) or -A your.celery_app."
        )


__all__ = ["replay_check", "versions"]
