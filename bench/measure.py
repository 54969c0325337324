"""Counters read around a phase, and the small statistics the report needs.

Counters:

- ``pg_counters``: ``xact_commit`` / ``xact_rollback`` of the benchmark
  database from ``pg_stat_database`` (every transaction, read-only ones
  included), ``wal_records`` / ``wal_bytes`` from ``pg_stat_wal`` when the
  server has it, and ``write_xacts``, the transaction-id counter, which only
  transactions that write advance. They are read through
  the admin database so that reading them adds no commit to the benchmark
  database. PostgreSQL backends publish their counts lazily (up to ~10 s after
  going idle), so callers read them only once every benchmark backend has
  exited, which flushes them. ``pg_stat_wal`` and the transaction-id counter
  are cluster-wide: concurrent activity in other databases inflates them.
- ``redis_counters``: ``calls`` per command from ``INFO commandstats``. The
  figures are server-wide, so commands issued by other clients of the same
  server during a phase are counted too.

The statistics are pure functions over plain numbers and dicts.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence

Counters = dict[str, float]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks.

    Raises:
        ValueError: if ``values`` is empty or ``q`` is outside 0..100.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return float(statistics.median(present))


def delta(before: Mapping[str, float], after: Mapping[str, float]) -> Counters:
    """``after - before`` per key; a key missing on one side counts as 0."""
    return {key: after.get(key, 0) - before.get(key, 0) for key in set(before) | set(after)}


def per_step(total: float | None, steps: int) -> float | None:
    """``total / steps``, or None when the total is unknown or there are no steps."""
    if total is None or steps <= 0:
        return None
    return total / steps


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def format_ratio(value: float | None, reason: str = "") -> str:
    """Render a ratio as ``0.76x``, or ``n/a`` (with a reason in parentheses)."""
    if value is None:
        return f"n/a ({reason})" if reason else "n/a"
    return f"{value:.2f}x"


def commandstats_calls(info: Mapping[str, object]) -> Counters:
    """Map ``INFO commandstats`` as parsed by redis-py to ``{command: calls}``.

    redis-py returns ``{"cmdstat_get": {"calls": 3, "usec": ...}, ...}``.
    """
    calls: Counters = {}
    for key, stats in info.items():
        if key.startswith("cmdstat_") and isinstance(stats, Mapping):
            calls[key.removeprefix("cmdstat_")] = float(stats.get("calls", 0))
    return calls


def redis_info(redis_url: str, section: str) -> dict[str, object]:
    """One section of the Redis server's ``INFO``, as redis-py parses it."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        info: dict[str, object] = client.info(section)
        return info
    finally:
        client.close()


def redis_counters(redis_url: str) -> Counters:
    """Calls per command since the Redis server started (server-wide)."""
    return commandstats_calls(redis_info(redis_url, "commandstats"))


def pg_counters(admin_url: str, db_name: str) -> Counters:
    """Commit/rollback counts of ``db_name`` and, if available, cluster WAL counts."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s",
            (db_name,),
        ).fetchone()
        counters: Counters = {"xact_commit": 0.0, "xact_rollback": 0.0}
        if row is not None:
            counters = {"xact_commit": float(row[0]), "xact_rollback": float(row[1])}
        try:
            wal = conn.execute("SELECT wal_records, wal_bytes FROM pg_stat_wal").fetchone()
        except psycopg.Error:  # PostgreSQL < 14 has no pg_stat_wal
            wal = None
        if wal is not None:
            counters["wal_records"] = float(wal[0])
            counters["wal_bytes"] = float(wal[1])
        # The next transaction id to be assigned: only writing transactions take one.
        next_xid = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()
        if next_xid is not None:
            counters["write_xacts"] = float(next_xid[0])
        return counters


def wait_for_no_clients(admin_url: str, db_name: str, deadline_s: float = 60.0) -> bool:
    """Wait until no client backend is connected to ``db_name``.

    Returns True when none is left, False when the deadline passed first.
    """
    import psycopg

    end = time.monotonic() + deadline_s
    with psycopg.connect(admin_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
                (db_name,),
            ).fetchone()
            if row is not None and row[0] == 0:
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.1)
