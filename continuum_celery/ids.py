"""Run ids and signal names: what a caller may use, checked before anything is written."""

from __future__ import annotations

import re
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
