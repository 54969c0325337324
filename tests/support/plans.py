"""The plans PostgreSQL uses for captured statements on a filled journal, and what is wrong with them.

Every statement runs again, with the parameters it was captured with, inside one
transaction that is rolled back, each in a savepoint of its own that is rolled
back at once (so every statement sees the same journal and none changes it),
with ``enable_seqscan = off``: a plan that still holds a Seq Scan had no index
to use. ``auto_explain`` reports the plan each execution really used, with the
rows each node read, nested statements included (the body of a server-side
function the journal may call). Each statement with parameters runs twice:
planned for its values (a custom plan) and for any values (a generic plan,
which PostgreSQL may switch to once psycopg prepares a statement it has run
five times, and in which a partial index whose predicate needs a parameter's
value cannot be used). A statement that cannot run again (a key it inserts
exists by now) is EXPLAINed without running: then only the shape of its plan
is judged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tests.support.statements import Statement

#: Run after each statement, so PostgreSQL ends its portal and auto_explain reports its plan now.
FLUSH = "SELECT 'flush the plan of the statement before'"
SESSION = {
    "enable_seqscan": "off",
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_analyze": "on",
    "auto_explain.log_timing": "off",  # rows read are the point, not times
    "auto_explain.log_nested_statements": "on",
    "auto_explain.log_format": "json",
    "auto_explain.log_level": "notice",  # sent to this client, not only to the server log
}
#: Scans that, with no index condition, walk a whole index (a bitmap scan always has a condition).
WHOLE_INDEX_SCANS = ("Index Scan", "Index Only Scan")


@dataclass(frozen=True)
class Plan:
    """A plan of one statement (or of one nested in it) for one parameter set.

    ``mode``: custom, generic, or estimated (EXPLAIN without running).
    """

    mode: str
    query: str
    root: dict[str, Any]
    params: Any = None


@dataclass
class Verdict:
    """A statement, the plans it ran with, and what is wrong with them (with the plan at fault, if one is)."""

    statement: Statement
    plans: list[Plan] = field(default_factory=list)
    problems: list[tuple[Plan | None, str]] = field(default_factory=list)


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A plan node and every node below it."""
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def rows_read(node: dict[str, Any]) -> int | None:
    """Rows a scan node took from its relation over all its loops (None in a plan that did not run)."""
    if "Actual Rows" not in node:
        return None
    removed = node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
    per_loop = node["Actual Rows"] + removed
    return int(per_loop * node.get("Actual Loops", 1))


def _index_of(node: dict[str, Any]) -> str | None:
    if node.get("Index Name"):
        return str(node["Index Name"])
    below = [n.get("Index Name") for n in nodes(node) if n is not node and n.get("Index Name")]
    return str(below[0]) if below else None


def problems(plan: Plan, hot: set[str], read_limit: int, partial: set[str]) -> list[str]:
    """What makes ``plan`` read more of a hot table than the rows it is about.

    A Seq Scan of a hot table; a scan that read more than ``read_limit`` rows of one; in a
    plan that did not run, an index scan with no condition on a whole (not partial) index.
    """
    found = []
    for node in nodes(plan.root):
        table = node.get("Relation Name")
        if table not in hot or node["Node Type"] == "ModifyTable":
            continue
        index = _index_of(node)
        what = f"{plan.mode} plan: {node['Node Type']} on {table}" + (f" using {index}" if index else "")
        read = rows_read(node)
        if node["Node Type"] == "Seq Scan":
            found.append(f"{what}: no index serves it")
        elif read is not None and read > read_limit:
            found.append(f"{what} read {read} rows (more than {read_limit}: it does not narrow to the rows it needs)")
        elif read is None and node["Node Type"] in WHOLE_INDEX_SCANS and not ("Index Cond" in node or index in partial):
            found.append(f"{what}: no index condition, it reads the whole index")
    return found


def render(node: dict[str, Any], depth: int = 0) -> str:
    """A plan as indented text, with the conditions and row counts that matter here."""
    label = node["Node Type"]
    if node.get("Relation Name"):
        label += f" on {node['Relation Name']}"
    if node.get("Index Name"):
        label += f" using {node['Index Name']}"
    read = rows_read(node)
    if read is not None:
        label += f"  (rows {node['Actual Rows']} x {node.get('Actual Loops', 1)} loops"
        removed = node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
        label += f", {removed} removed)" if removed else ")"
    else:
        label += f"  (estimated rows {node.get('Plan Rows')})"
    pad = "  " * depth
    lines = [pad + label]
    for key in ("Index Cond", "Recheck Cond", "Filter", "Join Filter", "Hash Cond", "Sort Key"):
        if key in node:
            lines.append(f"{pad}    {key}: {node[key]}")
    lines += [render(child, depth + 1) for child in node.get("Plans", [])]
    return "\n".join(lines)


def _logged(notices: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for text in notices:
        _, marker, body = text.partition("plan:\n")
        if not marker:
            continue
        logged = json.loads(body)
        if logged.get("Query Text", "").strip() != FLUSH:
            yield logged.get("Query Text", ""), logged["Plan"]


def _estimated(conn: psycopg.Connection[Any], statement: Statement, params: Any) -> Plan:
    with conn.transaction(force_rollback=True):
        cell = conn.execute("EXPLAIN (FORMAT JSON) " + statement.sql, params).fetchone()
    assert cell is not None
    raw = cell[0]
    return Plan("estimated", statement.sql, (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"], params)


def _plans(conn: psycopg.Connection[Any], notices: list[str], statement: Statement, params: Any) -> Iterator[Plan]:
    """The plans of one statement with one parameter set, custom then generic (see the module docstring)."""
    for mode in ("custom", "generic") if params else ("custom",):
        conn.execute(f"SET LOCAL plan_cache_mode = force_{mode}_plan")
        notices.clear()
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(statement.sql, params)
                conn.execute(FLUSH)
        except psycopg.Error:
            yield from (Plan(mode, q, p, params) for q, p in _logged(notices))  # nested ones that ran
            yield _estimated(conn, statement, params)
            return
        yield from (Plan(mode, q, p, params) for q, p in _logged(notices))


def plans_of(libpq_url: str, statements: Sequence[Statement]) -> list[Verdict]:
    """Run each statement as the module docstring says; one :class:`Verdict` (plans only) per statement.

    Raises:
        RuntimeError: the server has no ``auto_explain`` (a contrib module shipped with PostgreSQL).
    """
    verdicts = []
    with psycopg.connect(libpq_url, prepare_threshold=None) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        with conn.transaction(force_rollback=True):
            try:
                conn.execute("LOAD 'auto_explain'")
            except psycopg.Error as exc:
                raise RuntimeError(f"the plan check needs PostgreSQL's auto_explain module: {exc}") from exc
            for setting, value in SESSION.items():
                conn.execute(f"SET LOCAL {setting} = {value}")
            for statement in statements:
                verdict = Verdict(statement)
                for params in statement.param_sets:
                    try:
                        verdict.plans += _plans(conn, notices, statement, params)
                    except psycopg.Error as exc:
                        verdict.problems.append((None, f"cannot be planned here with {params!r}: {exc}"))
                verdicts.append(verdict)
    return verdicts


def partial_indexes(libpq_url: str) -> set[str]:
    """Names of the partial indexes of the database (reading one whole reads only the rows it holds)."""
    with psycopg.connect(libpq_url) as conn:
        rows = conn.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE indpred IS NOT NULL").fetchall()
    return {r[0] for r in rows}
