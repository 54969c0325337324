"""Canvas links in the SQL journal: stored with a run's start, claimed for sending once it ends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ..serialization import dumps, loads
from ..states import CONTINUED, ENDED
from .records import DueLink, NewRun
from .schema import canvas_links, runs
from .sql_base import SQLBase


class LinksMixin(SQLBase):
    """``claim_links`` and ``links_sent``; ``create_run`` stores a link through ``_add_link``."""

    def _add_link(self, conn: sa.Connection, run: NewRun) -> None:
        """Store ``run.link`` (once per start task id: a redelivered start adds nothing)."""
        if run.link is None:
            return
        insert = self._insert(canvas_links).values(
            task_id=run.link.task_id,
            run_id=run.id,
            request=dumps(run.link.request),
            created_at=self.clock.now,
        )
        conn.execute(insert.on_conflict_do_nothing(index_elements=["task_id"]))

    def claim_links(self, *, run_id: str | None = None, batch: int, hold: float) -> list[DueLink]:
        links = canvas_links.c
        with self._tx() as conn:
            while True:
                rows = conn.execute(self._due_links(run_id, batch)).all()
                continued = {r.run_id for r in rows if r.state == CONTINUED}
                if not continued:
                    break
                # A run that continued as new hands its links to its successor; then look again.
                successor = sa.select(runs.c.id).where(runs.c.continued_from_run_id == links.run_id)
                conn.execute(
                    canvas_links.update()
                    .where(links.sent_at.is_(None), links.run_id.in_(continued))
                    .values(run_id=successor.scalar_subquery())
                )
                if run_id is not None:
                    run_id = conn.execute(sa.select(runs.c.id).where(runs.c.continued_from_run_id == run_id)).scalar()
            if rows:
                conn.execute(
                    canvas_links.update()
                    .where(links.task_id.in_([r.task_id for r in rows]))
                    .values(claimed_until=self.clock.after(hold))
                )
        return [_due_link(r) for r in rows]

    def _due_links(self, run_id: str | None, batch: int) -> sa.Select[Any]:
        """Unsent, unclaimed links of ended (or continued) runs, oldest first, locked for this claim."""
        links = canvas_links.c
        of_run = [links.run_id == run_id] if run_id is not None else []
        return (
            sa.select(links.task_id, links.run_id, links.request, runs.c.workflow, runs.c.state, runs.c.result)
            .add_columns(runs.c.error)
            .join_from(canvas_links, runs, runs.c.id == links.run_id)
            .where(
                links.sent_at.is_(None),
                *of_run,
                runs.c.state.in_([*ENDED, CONTINUED]),
                sa.or_(links.claimed_until.is_(None), links.claimed_until < self.clock.now),
            )
            .order_by(links.created_at)
            .limit(batch)
            .with_for_update(of=canvas_links, skip_locked=True)
        )

    def links_sent(self, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        with self._tx() as conn:
            conn.execute(
                canvas_links.update().where(canvas_links.c.task_id.in_(list(task_ids))).values(sent_at=self.clock.now)
            )


def _due_link(row: Any) -> DueLink:
    return DueLink(
        task_id=row.task_id,
        run_id=row.run_id,
        workflow=row.workflow,
        state=row.state,
        result=loads(row.result),
        error=loads(row.error),
        request=loads(row.request),
    )
