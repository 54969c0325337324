"""Record what an activity attempt's liveness is judged by.

``started_at`` is when the current attempt was claimed (its start-to-close
deadline is ``started_at + timeout``); ``heartbeat_timeout`` is the most an
attempt may go without a heartbeat; ``heartbeat_at`` and ``heartbeat_details``
are its last heartbeat. The details outlive a failed attempt, so the next one
can resume where it was. ``schedule_to_close`` bounds all attempts together,
from the task's ``created_at``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = ("started_at", "heartbeat_timeout", "heartbeat_at", "heartbeat_details", "schedule_to_close")


def upgrade() -> None:
    op.add_column("continuum_activity_tasks", sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("continuum_activity_tasks", sa.Column("heartbeat_timeout", sa.Float, nullable=True))
    op.add_column("continuum_activity_tasks", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("continuum_activity_tasks", sa.Column("heartbeat_details", sa.Text, nullable=True))
    op.add_column("continuum_activity_tasks", sa.Column("schedule_to_close", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("continuum_activity_tasks") as batch:  # SQLite rebuilds the table
        for name in _COLUMNS:
            batch.drop_column(name)
