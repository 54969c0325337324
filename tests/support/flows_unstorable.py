"""Workflows whose errors, results or command names hold what the journal cannot store as it is.

A lone surrogate is what ``os.fsdecode`` makes of a non-UTF-8 file name; an int of more than
4,300 digits is what Python's JSON reader refuses. Activities mark each execution in
``test_marks`` (``<activity>:<run id>``), so a test counts the attempts that really ran.
"""

from __future__ import annotations

import os
from typing import Any

from continuum_celery import RetryPolicy, activity, workflow
from tests.support.flows import add, mark

#: ``'caf\udce9'``: the name of a file called ``café`` in Latin-1, as ``os.listdir`` returns it.
NON_UTF8 = os.fsdecode(b"caf\xe9")

#: Values an activity may return that JSON cannot carry, by the name tests use for them.
UNSTORABLE: dict[str, Any] = {
    "surrogate": {"file": NON_UTF8},
    "surrogate_key": {NON_UTF8: 1},
    "big_int": [10**5000],
}


@activity(name="tests.unstorable.produce", retry=RetryPolicy(max_attempts=3, initial_interval=0.2, backoff=1.0))
def produce(run_id: str, kind: str) -> Any:
    mark(f"produce:{run_id}")
    return UNSTORABLE[kind]


@activity(name="tests.unstorable.open_file", retry=RetryPolicy(max_attempts=2, initial_interval=0.2, backoff=1.0))
def open_file(run_id: str) -> None:
    mark(f"open_file:{run_id}")
    raise FileNotFoundError(2, "No such file or directory", f"/data/{NON_UTF8}")


@workflow(workflow="tests.unstorable.error")
def error_flow(ctx: Any, _: Any) -> None:
    """The issue's case: a first step journaled, then an error whose message holds a lone surrogate."""
    ctx.run(add, 1, 1)
    raise ValueError(NON_UTF8)


@workflow(workflow="tests.unstorable.activity_error")
def activity_error_flow(ctx: Any, _: Any) -> None:
    """An activity failing on every attempt with an error naming a non-UTF-8 file."""
    ctx.run(open_file, ctx.run_id)


@workflow(workflow="tests.unstorable.signal_name")
def signal_name_flow(ctx: Any, _: Any) -> Any:
    """A command the journal could not store: a wait on a signal named with a lone surrogate."""
    ctx.run(add, 1, 1)
    return ctx.wait_signal(NON_UTF8)


@workflow(workflow="tests.unstorable.result")
def result_flow(ctx: Any, kind: str) -> Any:
    """An activity returning a value JSON cannot carry (one of ``UNSTORABLE``)."""
    return ctx.run(produce, ctx.run_id, kind)


@workflow(workflow="tests.unstorable.waiter")
def waiter_flow(ctx: Any, _: Any) -> Any:
    """Waits for signal ``go`` and returns its payload."""
    return ctx.wait_signal("go")
