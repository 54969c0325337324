"""Run ids and signal names: what a caller may use, checked before anything is written."""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import Any

from .errors import InvalidArgument

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_SIGNAL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:-]{0,199}$")


def validate_run_id(run_id: Any) -> str:
    """Return ``run_id`` if it is a usable id.

    Raises:
        InvalidArgument: not a str of 1-128 letters, digits and ``._:@-``, starting with a letter or digit.
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise InvalidArgument(
            f"run_id {run_id!r} is malformed: use 1 to 128 characters of letters, digits and . _ : @ -, "
            "starting with a letter or digit (or leave it out to get a UUID).",
            run_id=repr(run_id),
        )
    return run_id


def new_run_id() -> str:
    """A new run's id: a UUID whose first 48 bits are the time in milliseconds (UUIDv7's layout, RFC 9562).

    Run ids lead the keys of the journal's biggest indexes (runs, events, activity
    tasks). Ids that grow with time put each new run at the right edge of every one
    of them, in pages already cached and already written to the WAL since the last
    checkpoint; random ids put each new run in another cold page of each index, so
    a start grew slower as the journal grew (``python -m bench.scale``). The other
    74 bits are random: ids stay unique across processes and unguessable.
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # the RFC 4122 variant
    return str(uuid.UUID(int=value))


def run_id_for_message(message_id: str) -> str:
    """The run id a start message without a ``run_id`` starts: one per Celery task id.

    The task id itself when it is a usable run id (Celery's are UUIDs, so the run and the
    message share their id); else a UUID derived from it.
    """
    if _RUN_ID.fullmatch(message_id):
        return message_id
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"continuum:start:{message_id}"))


def validate_signal_name(name: Any) -> str:
    """Return ``name`` if it is a usable signal name. Raises InvalidArgument."""
    if not isinstance(name, str) or not _SIGNAL_NAME.fullmatch(name):
        raise InvalidArgument(
            f"signal name {name!r} is malformed: use 1 to 200 letters, digits and . _ : -.",
            signal=repr(name),
        )
    return name
