"""Fill a journal with copies of runs the engine really wrote, inside PostgreSQL.

A copy of a template run has the template's rows in every table that holds a
run's rows (the run, its events, activity tasks, timers, signals, snapshots,
canvas links, stored results), as they are but for three things: every text
value holding the template's run id holds the copy's id instead (a random
UUID-shaped id: the worst case for the indexes, as in a journal written before
run ids were time-ordered, or of runs started from Celery canvas, whose ids are
Celery's random task ids); a primary key that does not hold it gets the
copy's id appended, so it stays unique; and the times that say when the run
happened (``SPREAD``) move back one second per copy, so indexes on them see
distinct keys. Times that say when a run wakes (``next_wakeup_at``,
``fire_at``, ``retry_at``, leases) are kept, so a copy of a suspended run
waits exactly as its template does. Copies are therefore as wide as real rows:
indexes, TOAST and the planner see what production would.

The tables and their columns are read from the database, so a column a
migration adds is copied too. One ``INSERT ... SELECT ... generate_series``
per table copies a whole batch; the caller commits between batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import Connection, sql

RUNS = "continuum_runs"
#: Times that date a copy (moved back one second per copy); every other time is kept as it is.
SPREAD = frozenset({"created_at", "updated_at", "finished_at", "started_at", "heartbeat_at"})
_TEXT = frozenset({"text", "character varying", "character"})


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str
    generated: bool  # filled by a sequence (nextval): left to the default
    key: bool  # part of the primary key


def run_tables(conn: Connection[Any]) -> dict[str, list[Column]]:
    """The journal tables that hold rows of a run (``continuum_runs`` and every table with a ``run_id``)."""
    rows = conn.execute(
        """
        SELECT c.table_name, c.column_name, c.data_type, coalesce(c.column_default LIKE 'nextval(%', false),
               EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
                       AND a.attnum = ANY (i.indkey)
                       WHERE i.indrelid = format('%I', c.table_name)::regclass AND i.indisprimary
                         AND a.attname = c.column_name)
        FROM information_schema.columns c
        WHERE c.table_schema = current_schema() AND c.table_name LIKE 'continuum\\_%'
        ORDER BY c.table_name, c.ordinal_position
        """
    ).fetchall()
    tables: dict[str, list[Column]] = {}
    for table, name, data_type, generated, key in rows:
        tables.setdefault(table, []).append(Column(name, data_type, generated, key))
    return {t: cols for t, cols in tables.items() if t == RUNS or any(c.name == "run_id" for c in cols)}


def _value(column: Column) -> sql.Composable:
    """The copy's value of ``column``, in terms of the template row ``t``, the copy's number ``g`` and id ``new``."""
    ident = sql.SQL("t.{}").format(sql.Identifier(column.name))
    if column.data_type in _TEXT and column.key:
        return sql.SQL(
            "CASE WHEN strpos({c}, %(template)s) > 0 THEN replace({c}, %(template)s, new.id) "
            "ELSE {c} || ':' || new.id END"
        ).format(c=ident)
    if column.data_type in _TEXT:
        return sql.SQL("replace({}, %(template)s, new.id)").format(ident)
    if column.name in SPREAD:
        return sql.SQL("{} - new.g * interval '1 second'").format(ident)
    return ident


def copy_run(conn: Connection[Any], template: str, *, tag: str, first: int, count: int) -> int:
    """Insert copies ``first`` .. ``first + count - 1`` of run ``template``; return the rows inserted.

    ``tag`` names the series: copies of one tag and number have one id, whatever the table.
    """
    inserted = 0
    for table, columns in run_tables(conn).items():
        copied = [c for c in columns if not c.generated]
        of_run = sql.Identifier("id" if table == RUNS else "run_id")
        statement = sql.SQL(
            "INSERT INTO {table} ({names}) SELECT {values} FROM {table} AS t, "
            "(SELECT g, md5(%(tag)s || g)::uuid::text AS id FROM generate_series(%(first)s::int, %(last)s::int) AS g) "
            "AS new WHERE t.{of_run} = %(template)s"
        ).format(
            table=sql.Identifier(table),
            names=sql.SQL(", ").join(sql.Identifier(c.name) for c in copied),
            values=sql.SQL(", ").join(_value(c) for c in copied),
            of_run=of_run,
        )
        params = {"tag": tag, "first": first, "last": first + count - 1, "template": template}
        inserted += conn.execute(statement, params).rowcount
    return inserted
