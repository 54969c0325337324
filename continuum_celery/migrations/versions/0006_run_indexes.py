"""Index the parked runs by version; drop the index on correlation ids, which no statement reads.

A run parked with a ``stuck_reason`` (``unknown_version``: no live worker has its
version) is found again by two statements that run all the time, whatever the
journal holds:

- the version heartbeat of every worker (``upsert_versions``, every
  ``version_heartbeat`` seconds, per loaded version) unparks the runs of each
  version it serves: ``workflow = ? AND version_hash = ? AND stuck_reason =
  'unknown_version'``. Through ``continuum_runs_workflow_state`` it read every
  run of the workflow, finished ones included: on a journal of 1.1 million
  runs, a sequential scan of 290-365 ms per version and heartbeat (0.3 ms with
  this index).
- the sweep (``park_unknown_versions``) counts the parked runs per version. The
  due index leaves parked runs out (0002), so the count read every suspended run:
  170-210 ms per sweep on that journal (0.02 ms with this index).

Parked runs are few, so the index is small, and its columns never change while
a run steps: step updates stay HOT.

No statement looks runs up by ``correlation_id``, yet its index took a write at
every start in a page of its own: a root run's correlation id is its own random
id, so on a big journal each start dirtied one more cold leaf (a full page in
the WAL after each checkpoint) and the index held 77 bytes per run
(``python -m bench.scale``).

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
    op.drop_index("continuum_runs_correlation", table_name="continuum_runs")
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
    op.create_index("continuum_runs_correlation", "continuum_runs", ["correlation_id"])
