"""Tie an inline activity attempt to the run lease it runs under.

An attempt run inside a replay task lives exactly as long as that task's lease
on the run. ``run_lease_token`` records the lease; a claim that takes the run
over with a newer token retries the attempt at once (by its retry policy)
instead of leaving it to its start-to-close timeout. NULL for attempts run by
``continuum.activity`` tasks, which keep their own lease.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("continuum_activity_tasks", sa.Column("run_lease_token", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("continuum_activity_tasks") as batch:  # SQLite rebuilds the table
        batch.drop_column("run_lease_token")
