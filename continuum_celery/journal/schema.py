"""The journal's tables (SQLAlchemy Core) and the migration entry points.

The tables here describe the schema the code expects; Alembic revisions in
``continuum_celery/migrations/`` create and evolve it. ``migrate(url)`` applies them;
``check_schema`` refuses to start on a database that is behind.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from ..errors import ConfigurationError, SchemaNotMigrated
from ..states import RUN_STATES
from .sql_errors import database_errors

#: Alembic's bookkeeping table, named so it never meets an application's own Alembic history.
VERSION_TABLE = "continuum_alembic_version"



class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores them naive; read back as UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the journal; use an aware UTC datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stored: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        return stored.replace(tzinfo=timezone.utc) if stored.tzinfo is None else stored


metadata = sa.MetaData()
_ts = UTCDateTime

runs = sa.Table(
    "continuum_runs",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("version_hash", sa.String(32), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("input", sa.Text),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("lease_token", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("lease_owner", sa.String(200)),
    sa.Column("lease_expires_at", _ts),
    sa.Column("next_wakeup_at", _ts),
    sa.Column("dispatched_at", _ts),
    sa.Column("wake_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("last_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("parent_run_id", sa.String(128)),
    sa.Column("parent_command_id", sa.Integer),
    sa.Column("correlation_id", sa.String(128), nullable=False),
    sa.Column("continued_from_run_id", sa.String(128)),
    sa.Column("cancel_requested_at", _ts),
    sa.Column("cancel_journaled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("reported_to_parent", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("stuck_reason", sa.String(64)),
    sa.Column("trace_context", sa.Text),
    sa.Column("created_at", _ts, nullable=False),
    sa.Column("updated_at", _ts, nullable=False),
    sa.CheckConstraint(f"state IN {RUN_STATES!r}", name="continuum_runs_state"),
)
# Only runs a worker may claim when due: parked runs (stuck_reason) stay out of the sweep's reads.
_claimable = sa.and_(runs.c.state.in_(["pending", "suspended"]), runs.c.stuck_reason.is_(None))
sa.Index("continuum_runs_due", runs.c.next_wakeup_at, postgresql_where=_claimable, sqlite_where=_claimable)
sa.Index(
    "continuum_runs_leased",
    runs.c.lease_expires_at,
    postgresql_where=runs.c.state == "running",
    sqlite_where=runs.c.state == "running",
)
sa.Index("continuum_runs_workflow_state", runs.c.workflow, runs.c.state, runs.c.created_at)
# Parked runs by version: the version heartbeat unparks a version's runs, the sweep counts them (0006).
_parked = runs.c.stuck_reason.is_not(None)
sa.Index("continuum_runs_parked", runs.c.workflow, runs.c.version_hash, postgresql_where=_parked, sqlite_where=_parked)
sa.Index("continuum_runs_parent", runs.c.parent_run_id)
sa.Index("continuum_runs_continued_from", runs.c.continued_from_run_id)

events = sa.Table(
    "continuum_events",
    metadata,
    sa.Column("run_id", sa.String(128), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("command_id", sa.Integer),
    sa.Column("name", sa.String(200)),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", _ts, nullable=False),
)

activity_tasks = sa.Table(
    "continuum_activity_tasks",
    metadata,
    sa.Column("id", sa.String(160), primary_key=True),
    sa.Column("run_id", sa.String(128), nullable=False),
    sa.Column("command_id", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("arguments", sa.Text, nullable=False),
    sa.Column("queue", sa.String(200)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("retry_policy", sa.Text, nullable=False),
    sa.Column("timeout", sa.Float),
    sa.Column("idempotency_key", sa.String(200)),
    sa.Column("retry_at", _ts),
    sa.Column("dispatched_at", _ts),
    sa.Column("lease_expires_at", _ts),
    sa.Column("owner", sa.String(200)),
    # The run lease an inline attempt runs under (it dies with it); NULL for a continuum.activity attempt.
    sa.Column("run_lease_token", sa.BigInteger),
    # Liveness of the current attempt: claimed at, most seconds between heartbeats, the last heartbeat.
    sa.Column("started_at", _ts),
    sa.Column("heartbeat_timeout", sa.Float),
    sa.Column("heartbeat_at", _ts),
    sa.Column("heartbeat_details", sa.Text),
    # Seconds all attempts together may take, from the task's creation (None: no such limit).
    sa.Column("schedule_to_close", sa.Float),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("outcome_seq", sa.Integer),
    sa.Column("created_at", _ts, nullable=False),
    sa.Column("updated_at", _ts, nullable=False),
    sa.Column("finished_at", _ts),
)
sa.Index(
    "continuum_activity_tasks_due",
    activity_tasks.c.retry_at,
    postgresql_where=activity_tasks.c.state == "scheduled",
    sqlite_where=activity_tasks.c.state == "scheduled",
)
sa.Index(
    "continuum_activity_tasks_leased",
    activity_tasks.c.lease_expires_at,
    postgresql_where=activity_tasks.c.state == "running",
    sqlite_where=activity_tasks.c.state == "running",
)
sa.Index("continuum_activity_tasks_run", activity_tasks.c.run_id, activity_tasks.c.state)

timers = sa.Table(
    "continuum_timers",
    metadata,
    sa.Column("run_id", sa.String(128), primary_key=True),
    sa.Column("command_id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200)),
    sa.Column("fire_at", _ts),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("outcome_seq", sa.Integer),
    sa.Column("created_at", _ts, nullable=False),
)
sa.Index(
    "continuum_timers_pending",
    timers.c.run_id,
    timers.c.fire_at,
    postgresql_where=timers.c.state == "pending",
    sqlite_where=timers.c.state == "pending",
)

signals = sa.Table(
    "continuum_signals",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("run_id", sa.String(128), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("consumed_seq", sa.Integer),
    sa.Column("created_at", _ts, nullable=False),
)
sa.Index(
    "continuum_signals_inbox",
    signals.c.run_id,
    signals.c.name,
    signals.c.id,
    postgresql_where=signals.c.consumed_seq.is_(None),
    sqlite_where=signals.c.consumed_seq.is_(None),
)

snapshots = sa.Table(
    "continuum_snapshots",
    metadata,
    sa.Column("run_id", sa.String(128), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("created_at", _ts, nullable=False),
)

workflow_versions = sa.Table(
    "continuum_workflow_versions",
    metadata,
    sa.Column("workflow", sa.String(200), primary_key=True),
    sa.Column("version_hash", sa.String(32), primary_key=True),
    sa.Column("hostname", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("module", sa.String(300)),
    sa.Column("first_seen_at", _ts, nullable=False),
    sa.Column("last_seen_at", _ts, nullable=False),
)

activity_results = sa.Table(
    "continuum_activity_results",
    metadata,
    sa.Column("idempotency_key", sa.String(200), primary_key=True),
    sa.Column("activity", sa.String(200), nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(128), nullable=False),
    sa.Column("created_at", _ts, nullable=False),
)

# What follows a run started by a Celery task (its callbacks, errbacks, chain, chord), one row per
# start task: stored with the run, sent once after the run ends (see continuum_celery.canvas).
canvas_links = sa.Table(
    "continuum_canvas_links",
    metadata,
    sa.Column("task_id", sa.String(255), primary_key=True),
    sa.Column("run_id", sa.String(128), nullable=False),
    sa.Column("request", sa.Text, nullable=False),
    sa.Column("claimed_until", _ts),
    sa.Column("sent_at", _ts),
    sa.Column("created_at", _ts, nullable=False),
)
sa.Index(
    "continuum_canvas_links_unsent",
    canvas_links.c.run_id,
    postgresql_where=canvas_links.c.sent_at.is_(None),
    sqlite_where=canvas_links.c.sent_at.is_(None),
)


def migrations_dir() -> Path:
    """Where the Alembic revisions live: ``continuum_celery/migrations``, shipped inside the package."""
    here = Path(__file__).resolve().parents[1] / "migrations"
    if (here / "env.py").exists():
        return here
    raise ConfigurationError(f"continuum migrations not found at {here}; reinstall continuum-celery.")


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest revision the code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def migrate(url: str) -> str:
    """Apply every pending migration to the database at ``url``; return the head revision.

    Raises:
        JournalUnavailable: the database cannot be reached. ConfigurationError: ``url`` is not usable.
    """
    from alembic import command

    with database_errors(url):
        command.upgrade(_alembic_config(url), "head")
    return head_revision()


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at, or None when continuum was never migrated there."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def check_schema(engine: sa.Engine) -> None:
    """Refuse to run against a database that is not migrated to the code's head.

    Raises:
        SchemaNotMigrated: with the command that fixes it.
        JournalUnavailable: the database cannot be reached (on the journal's engine, whose errors are translated).
    """
    found = current_revision(engine)
    head = head_revision()
    if found != head:
        where = engine.url.render_as_string(hide_password=True)
        state = "has no continuum tables" if found is None else f"is at revision {found}, the code needs {head}"
        raise SchemaNotMigrated(
            f"the journal database {where} {state}: run `continuum migrate` "
            f"(with CONTINUUM_DATABASE_URL={where}) before starting workers.",
            found=found,
            expected=head,
        )
