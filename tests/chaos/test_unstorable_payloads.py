"""Errors and values the journal cannot store as they are, on real worker processes and PostgreSQL.

A lone surrogate (how Python decodes a non-UTF-8 file name) or an int of more than 4,300
digits used to make a commit fail: a run whose error held one failed every commit, its lease
lapsed, it was claimed again, forever; an activity returning one was retried as if it had
crashed. Now an error is escaped so the run fails once with a readable error, and a value is
refused with ``PayloadError`` where it enters: an activity's attempt fails once, never retried.
Both paths of an activity attempt are covered: inline in the replay task and as a
``continuum.activity`` message.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from continuum_celery import WorkflowFailed
from continuum_celery.client import RunHandle
from tests.chaos.audit import audit
from tests.support import flows_unstorable as flows
from tests.support.stack import Proc, Stack, wait_until

pytestmark = pytest.mark.chaos

MODULES = ("tests.support.flows_unstorable", "tests.support.version_marks")
PATHS = {"inline": "1", "celery": "0"}


def _worker(chaos: Stack, path: str) -> Proc:
    chaos.modules = MODULES
    return chaos.worker(f"unstorable-{path}", CONTINUUM_INLINE_ACTIVITIES=PATHS[path])


def _kinds(chaos: Stack, run_id: str) -> list[str]:
    return [r.kind for r in chaos.sql("SELECT kind FROM continuum_events WHERE run_id = :r ORDER BY seq", r=run_id)]


def _failure(handle: RunHandle) -> dict[str, Any]:
    with pytest.raises(WorkflowFailed) as failed:
        handle.result(timeout=60)
    assert failed.value.state == "failed"
    return failed.value.error


def _run_rows(chaos: Stack, run_ids: list[str]) -> list[tuple[Any, ...]]:
    rows = chaos.sql(
        "SELECT id, state, lease_token, last_seq, updated_at FROM continuum_runs WHERE id = ANY(:ids) ORDER BY id",
        ids=run_ids,
    )
    return [tuple(r) for r in rows]


def _marked(chaos: Stack, name: str) -> int:
    return int(chaos.sql("SELECT count(*) AS n FROM test_marks WHERE name = :n", n=name)[0].n)


def _assert_failed_for_good(chaos: Stack, run_ids: list[str], path: str) -> None:
    """The runs failed once and stay so: no claim, no event across sweeps that outlast a lease; a clean audit."""
    before = _run_rows(chaos, run_ids)
    # At a sweep every 0.5 s, 10 sweeps outlast the 3 s lease a looping run would have lapsed.
    seen = _marked(chaos, "sweep")
    wait_until(lambda: _marked(chaos, "sweep") >= seen + 10, 60, "ten more sweeps")
    assert _run_rows(chaos, run_ids) == before
    result = audit(chaos.sql, expected=run_ids)
    print(f"{path}: {result.summary()}")
    result.assert_clean()
    assert result.states == {"failed": len(run_ids)}


def _activity_messages(worker: Proc) -> int:
    """``continuum.activity`` messages the worker received (inline attempts send none)."""
    return len(re.findall(r"Task continuum\.activity\[[^\]]+\] received", worker.output()))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_an_error_holding_a_lone_surrogate_fails_its_run_once_readably(chaos: Stack, path: str) -> None:
    worker = _worker(chaos, path)
    chaos.beat()
    raised = flows.error_flow.start(None)
    in_activity = flows.activity_error_flow.start(None)
    in_command = flows.signal_name_flow.start(None)
    ids = [raised.id, in_activity.id, in_command.id]

    error = _failure(raised)
    assert (error["type"], error["module"], error["message"]) == ("ValueError", "builtins", "caf\\udce9")
    assert "ValueError: caf\\udce9" in error["traceback"]
    assert _kinds(chaos, raised.id) == ["run_started", "activity_scheduled", "activity_completed", "run_failed"]

    error = _failure(in_activity)
    assert error["type"] == "ActivityFailed" and "after 2 attempt(s)" in error["message"]
    assert "FileNotFoundError: [Errno 2] No such file or directory: '/data/caf\\udce9'" in error["message"]
    assert _kinds(chaos, in_activity.id) == ["run_started", "activity_scheduled", "activity_failed", "run_failed"]
    tasks = chaos.sql("SELECT state, attempt FROM continuum_activity_tasks WHERE run_id = :r", r=in_activity.id)
    assert [tuple(t) for t in tasks] == [("failed", 2)]
    assert _marked(chaos, f"open_file:{in_activity.id}") == 2

    error = _failure(in_command)
    assert error["type"] == "PayloadError"
    assert "(signal_wait) of run" in error["message"] and "lone surrogate '\\udce9'" in error["message"]
    assert _kinds(chaos, in_command.id) == ["run_started", "activity_scheduled", "activity_completed", "run_failed"]

    _assert_failed_for_good(chaos, ids, path)
    # The first attempts took the path under test (the retry of open_file is always a message).
    assert _activity_messages(worker) == (1 if path == "inline" else 4)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_an_activity_returning_an_unstorable_value_fails_once_with_payload_error(chaos: Stack, path: str) -> None:
    worker = _worker(chaos, path)
    chaos.beat()
    handles = {kind: flows.result_flow.start(kind) for kind in sorted(flows.UNSTORABLE)}
    expected = {
        "big_int": "result of activity tests.unstorable.produce[0] is an int of more than 4300 digits",
        "surrogate": "result of activity tests.unstorable.produce['file'] holds the lone surrogate '\\udce9'",
        "surrogate_key": "result of activity tests.unstorable.produce has a key that holds the lone surrogate",
    }
    for kind, handle in handles.items():
        error = _failure(handle)
        assert error["type"] == "ActivityFailed" and "after 1 attempt(s)" in error["message"], error
        assert f"PayloadError: {expected[kind]}" in error["message"]
        assert _kinds(chaos, handle.id) == ["run_started", "activity_scheduled", "activity_failed", "run_failed"]
        (task,) = chaos.sql(
            "SELECT state, attempt, max_attempts, error FROM continuum_activity_tasks WHERE run_id = :r", r=handle.id
        )
        assert (task.state, task.attempt, task.max_attempts) == ("failed", 1, 3), "no retry of a PayloadError"
        assert _marked(chaos, f"produce:{handle.id}") == 1

    ids = [h.id for h in handles.values()]
    _assert_failed_for_good(chaos, ids, path)
    assert _activity_messages(worker) == (0 if path == "inline" else 3)
