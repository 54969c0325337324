"""Snapshots of a run's replay log, so a cache miss reads a bounded number of rows.

A workflow body cannot be frozen (it is a live Python frame), so a snapshot
holds what a fresh :class:`~continuum_celery.replay.Execution` needs to catch
up: the run's commands and outcomes up to sequence ``upto``, compacted. Commands
keep their kind, command id and name, and only the payload fields the context
reads back (the arguments of an activity, the input of a child, a compensated
result are dropped: the body recomputes them); outcomes keep their payloads,
since the body observes them; run-level records that replay ignores are left
out. Loading a run is then the newest snapshot plus the events after ``upto``.

Each adapter stores the encoded text (SQL: ``continuum_snapshots``) whenever a
commit carries ``last_seq`` across a multiple of ``snapshot_every``, building
the new snapshot from the previous one and the events since, and keeps only
the newest; a finished run's snapshots are deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .events import Event, Kind
from .serialization import dumps

#: Version of the encoded form; a snapshot of another format is ignored (the full history is read).
FORMAT = 1

#: Payload fields replay never reads back, per command kind: the body recomputes them.
_DROPPED: Mapping[Kind, frozenset[str]] = {
    Kind.ACTIVITY_SCHEDULED: frozenset({"args", "kwargs"}),
    Kind.COMPENSATION_SCHEDULED: frozenset({"args", "kwargs", "result"}),
    Kind.CHILD_STARTED: frozenset({"input"}),
}
#: Outcome payload fields that are bookkeeping only.
_BOOKKEEPING = frozenset({"signal_id"})


@dataclass(frozen=True)
class Snapshot:
    """A run's compacted replay log up to ``upto`` (inclusive)."""

    upto: int
    events: list[Event]


def replayable(event: Event) -> bool:
    """Whether replay looks at this event (commands and the outcomes a body observes)."""
    return event.is_command or (event.is_outcome and event.kind is not Kind.RUN_STARTED)


def compact(events: Iterable[Event]) -> list[Event]:
    """The events replay needs, with the payload fields it never reads removed."""
    out: list[Event] = []
    for event in events:
        if not replayable(event):
            continue
        drop = _DROPPED.get(event.kind, _BOOKKEEPING)
        payload = {k: v for k, v in event.payload.items() if k not in drop}
        out.append(Event(seq=event.seq, kind=event.kind, command_id=event.command_id, name=event.name, payload=payload))
    return out


def extend(previous: Snapshot | None, events: Iterable[Event], upto: int) -> Snapshot:
    """The snapshot at ``upto``: ``previous`` plus ``events`` (those after ``previous.upto``, up to ``upto``)."""
    base = previous.events if previous is not None else []
    after = previous.upto if previous is not None else 0
    fresh = compact(e for e in events if after < e.seq <= upto)
    return Snapshot(upto=upto, events=[*base, *fresh])


def due(old_seq: int, new_seq: int, every: int) -> bool:
    """Whether a commit that moves ``last_seq`` from ``old_seq`` to ``new_seq`` crosses a multiple of ``every``."""
    return new_seq // every > old_seq // every


def encode(snapshot: Snapshot) -> str:
    """Canonical JSON text of a snapshot (rows of ``[seq, kind, command_id, name, payload]``)."""
    rows = [[e.seq, e.kind.value, e.command_id, e.name, dict(e.payload)] for e in snapshot.events]
    return dumps({"format": FORMAT, "upto": snapshot.upto, "events": rows})


def decode(text: str | None) -> Snapshot | None:
    """Read an encoded snapshot; None if it is missing or of another format (then read the full history)."""
    if not text:
        return None
    data: Any = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    events = [
        Event(seq=seq, kind=Kind(kind), command_id=command_id, name=name, payload=payload)
        for seq, kind, command_id, name, payload in data["events"]
    ]
    return Snapshot(upto=int(data["upto"]), events=events)
