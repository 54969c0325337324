"""The journal's tables: runs, events, activity tasks, timers, signals, snapshots, versions, idempotent results.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "continuum_runs",
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
        sa.Column("lease_expires_at", TS),
        sa.Column("next_wakeup_at", TS),
        sa.Column("dispatched_at", TS),
        sa.Column("wake_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_seq", sa.Integer, nullable=False, server_default="0"),
        sa.Column("parent_run_id", sa.String(128)),
        sa.Column("parent_command_id", sa.Integer),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("continued_from_run_id", sa.String(128)),
        sa.Column("cancel_requested_at", TS),
        sa.Column("cancel_journaled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("reported_to_parent", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("stuck_reason", sa.String(64)),
        sa.Column("trace_context", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'running', 'suspended', 'completed', 'failed', 'cancelled', 'continued')",
            name="continuum_runs_state",
        ),
    )
    runnable = sa.text("state IN ('pending', 'suspended')")
    op.create_index(
        "continuum_runs_due",
        "continuum_runs",
        ["next_wakeup_at"],
        postgresql_where=runnable,
        sqlite_where=runnable,
    )
    running = sa.text("state = 'running'")
    op.create_index(
        "continuum_runs_leased",
        "continuum_runs",
        ["lease_expires_at"],
        postgresql_where=running,
        sqlite_where=running,
    )
    op.create_index("continuum_runs_workflow_state", "continuum_runs", ["workflow", "state", "created_at"])
    op.create_index("continuum_runs_parent", "continuum_runs", ["parent_run_id"])
    op.create_index("continuum_runs_correlation", "continuum_runs", ["correlation_id"])
    op.create_index("continuum_runs_continued_from", "continuum_runs", ["continued_from_run_id"])

    op.create_table(
        "continuum_events",
        sa.Column("run_id", sa.String(128), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("command_id", sa.Integer),
        sa.Column("name", sa.String(200)),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )

    op.create_table(
        "continuum_activity_tasks",
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
        sa.Column("retry_at", TS),
        sa.Column("dispatched_at", TS),
        sa.Column("lease_expires_at", TS),
        sa.Column("owner", sa.String(200)),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("outcome_seq", sa.Integer),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS),
    )
    scheduled = sa.text("state = 'scheduled'")
    op.create_index(
        "continuum_activity_tasks_due",
        "continuum_activity_tasks",
        ["retry_at"],
        postgresql_where=scheduled,
        sqlite_where=scheduled,
    )
    op.create_index(
        "continuum_activity_tasks_leased",
        "continuum_activity_tasks",
        ["lease_expires_at"],
        postgresql_where=running,
        sqlite_where=running,
    )
    op.create_index("continuum_activity_tasks_run", "continuum_activity_tasks", ["run_id", "state"])

    op.create_table(
        "continuum_timers",
        sa.Column("run_id", sa.String(128), primary_key=True),
        sa.Column("command_id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("fire_at", TS),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome_seq", sa.Integer),
        sa.Column("created_at", TS, nullable=False),
    )
    pending = sa.text("state = 'pending'")
    op.create_index(
        "continuum_timers_pending",
        "continuum_timers",
        ["run_id", "fire_at"],
        postgresql_where=pending,
        sqlite_where=pending,
    )

    op.create_table(
        "continuum_signals",
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
        sa.Column("created_at", TS, nullable=False),
    )
    unconsumed = sa.text("consumed_seq IS NULL")
    op.create_index(
        "continuum_signals_inbox",
        "continuum_signals",
        ["run_id", "name", "id"],
        postgresql_where=unconsumed,
        sqlite_where=unconsumed,
    )

    op.create_table(
        "continuum_snapshots",
        sa.Column("run_id", sa.String(128), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )

    op.create_table(
        "continuum_workflow_versions",
        sa.Column("workflow", sa.String(200), primary_key=True),
        sa.Column("version_hash", sa.String(32), primary_key=True),
        sa.Column("hostname", sa.String(200), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("module", sa.String(300)),
        sa.Column("first_seen_at", TS, nullable=False),
        sa.Column("last_seen_at", TS, nullable=False),
    )

    op.create_table(
        "continuum_activity_results",
        sa.Column("idempotency_key", sa.String(200), primary_key=True),
        sa.Column("activity", sa.String(200), nullable=False),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "continuum_activity_results",
        "continuum_workflow_versions",
        "continuum_snapshots",
        "continuum_signals",
        "continuum_timers",
        "continuum_activity_tasks",
        "continuum_events",
        "continuum_runs",
    ):
        op.drop_table(table)
