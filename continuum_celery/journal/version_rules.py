"""The journal's decisions about workflow versions: what the registry rows sum up to, and which are stale."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

#: ``last_seen_at`` of a worker's version rows after its clean shutdown: never live again, and kept
#: (rather than deleted) so that ``continuum versions prune`` still finds the version and its queue.
STOPPED_AT = datetime(1970, 1, 1, tzinfo=timezone.utc)


def summarise_versions(
    rows: Iterable[Mapping[Any, Any]], pinned: Mapping[tuple[str, str], int]
) -> list[dict[str, Any]]:
    """Fold per-host version rows and pinned-run counts into one entry per (workflow, version_hash).

    Args:
        rows: ``workflow_versions`` rows, ordered by workflow and version.
        pinned: non-terminal runs per (workflow, version_hash).
    """
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        entry = out.setdefault(
            (r["workflow"], r["version_hash"]),
            {
                "workflow": r["workflow"],
                "version_hash": r["version_hash"],
                "version": r["version"],
                "module": r["module"],
                "hostnames": [],
                "first_seen_at": r["first_seen_at"],
                "last_seen_at": r["last_seen_at"],
                "pinned_runs": pinned.get((r["workflow"], r["version_hash"]), 0),
                "workers": [],
            },
        )
        entry["hostnames"].append(r["hostname"])
        entry["workers"].append({"hostname": r["hostname"], "last_seen_at": r["last_seen_at"]})
        entry["first_seen_at"] = min(entry["first_seen_at"], r["first_seen_at"])
        entry["last_seen_at"] = max(entry["last_seen_at"], r["last_seen_at"])
    for (workflow, version_hash), n in pinned.items():
        out.setdefault(
            (workflow, version_hash),
            {
                "workflow": workflow,
                "version_hash": version_hash,
                "version": None,
                "module": None,
                "hostnames": [],
                "first_seen_at": None,
                "last_seen_at": None,
                "pinned_runs": n,
                "workers": [],
            },
        )
    return list(out.values())


def stale_versions(entries: Iterable[Mapping[str, Any]], live_after: datetime) -> list[tuple[str, str]]:
    """The (workflow, version_hash) of :func:`summarise_versions` entries nothing needs any more.

    A version is stale when workers once recorded it, none of them was seen after ``live_after``
    (or each stopped cleanly), and no unfinished run is pinned to it: its queue and rows can go.
    """
    return [
        (e["workflow"], e["version_hash"])
        for e in entries
        if e["workers"]
        and e["pinned_runs"] == 0
        and all(w["last_seen_at"] is None or w["last_seen_at"] < live_after for w in e["workers"])
    ]
