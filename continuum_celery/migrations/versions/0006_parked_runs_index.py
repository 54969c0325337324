"""Index the parked runs by version, so the statements that look for them read only them.

A run parked with a ``stuck_reason`` (``unknown_version``: no live worker has its
version) is found again by two statements that run all the time, whatever the
journal holds:

- the version heartbeat of every worker (``upsert_versions``, every
  ``version_heartbeat`` seconds, per loaded version) unparks the runs of each
  version it serves: ``workflow = ? AND version_hash = ? AND stuck_reason =
  'unknown_version'``. Through ``continuum_runs_workflow_state`` it read every
  run of the workflow, finished ones included: a million rows per heartbeat on a
  journal of a million runs.
- the sweep (``park_unknown_versions``) counts the parked runs per version. The
  due index leaves parked runs out (0002), so the count read every suspended run.

Parked runs are few, so the index is small, and its columns never change while
a run steps: step updates stay HOT.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    parked = sa.text("stuck_reason IS NOT NULL")
    op.create_index(
        "continuum_runs_parked",
        "continuum_runs",
        ["workflow", "version_hash"],
        postgresql_where=parked,
        sqlite_where=parked,
    )


def downgrade() -> None:
    op.drop_index("continuum_runs_parked", table_name="continuum_runs")
