"""Helpers for users' test suites.

``assert_replays`` is the pytest face of ``continuum replay-check``: run it in
CI, with the new code imported, against a copy of production histories::

    from continuum_celery.testing import assert_replays
    import myapp.workflows  # noqa: F401 - registers the workflow definitions

    def test_deployed_histories_still_replay():
        assert_replays("tests/data/histories.json")  # or a database URL
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidArgument
from .replay_check import DEFAULT_LIMIT, History, ReplayReport, check_histories, load_histories, read_histories
from .versioning import Registry


def assert_replays(
    histories_or_url: str | os.PathLike[str] | Iterable[History | Mapping[str, Any]],
    *,
    workflow: str | None = None,
    limit: int = DEFAULT_LIMIT,
    registry: Registry | None = None,
) -> ReplayReport:
    """Replay histories against the loaded code; fail the test if any run is no longer reproduced.

    Args:
        histories_or_url: a database URL (``postgresql://...``, ``sqlite:///...``, read
            read-only), the path of a file written by
            :func:`~continuum_celery.replay_check.export_history`, or histories
            themselves (``History`` objects or export records).
        workflow: only runs of this workflow (database source).
        limit: newest runs read at most (database source).
        registry: the definitions to replay with (default: every loaded ``@workflow``).

    Returns:
        The report, when every history replayed (or was skipped).

    Raises:
        AssertionError: one line per failing run, and the summary.
        InvalidArgument: the source is neither a URL, an export file nor histories.
    """
    report = check_histories(_histories(histories_or_url, workflow, limit), registry)
    if not report.ok:
        raise AssertionError("histories the current code no longer reproduces:\n" + report.format())
    return report


def _histories(source: Any, workflow: str | None, limit: int) -> list[History]:
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if "://" in text:
            return read_histories(text, workflow=workflow, limit=limit)
        if os.path.isfile(text):
            return load_histories(text)
        raise InvalidArgument(f"{text!r} is neither a database URL nor an existing history file.")
    if isinstance(source, Iterable):
        return [h if isinstance(h, History) else History.from_json(h, f"history {i}") for i, h in enumerate(source)]
    raise InvalidArgument(f"assert_replays needs a URL, a file or histories, got {type(source).__name__}.")


__all__ = ["assert_replays"]
