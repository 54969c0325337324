"""Keep parked runs out of the sweep's due index.

A run parked with a ``stuck_reason`` (a version no worker has loaded, a
nondeterminism error) keeps its past ``next_wakeup_at``; the old index held it,
so every sweep read it again and dropped it. The sweep's query already asks for
``stuck_reason IS NULL``; the index now says the same.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _due_index(predicate: str) -> None:
    where = sa.text(predicate)
    op.create_index(
        "continuum_runs_due", "continuum_runs", ["next_wakeup_at"], postgresql_where=where, sqlite_where=where
    )


def upgrade() -> None:
    op.drop_index("continuum_runs_due", table_name="continuum_runs")
    _due_index("state IN ('pending', 'suspended') AND stuck_reason IS NULL")


def downgrade() -> None:
    op.drop_index("continuum_runs_due", table_name="continuum_runs")
    _due_index("state IN ('pending', 'suspended')")
