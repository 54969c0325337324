"""Canvas links: what follows a run started by a Celery task, sent once when the run ends.

One row per start task (``task_id``): the callbacks, errbacks, chain and chord of
its request, stored with the run in the journal. The sender claims a row for a
while (``claimed_until``) and marks it ``sent_at`` once the result, the chord
part and the next tasks are out.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "continuum_canvas_links",
        sa.Column("task_id", sa.String(255), primary_key=True),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("claimed_until", TS),
        sa.Column("sent_at", TS),
        sa.Column("created_at", TS, nullable=False),
    )
    unsent = sa.text("sent_at IS NULL")
    op.create_index(
        "continuum_canvas_links_unsent",
        "continuum_canvas_links",
        ["run_id"],
        postgresql_where=unsent,
        sqlite_where=unsent,
    )


def downgrade() -> None:
    op.drop_index("continuum_canvas_links_unsent", table_name="continuum_canvas_links")
    op.drop_table("continuum_canvas_links")
