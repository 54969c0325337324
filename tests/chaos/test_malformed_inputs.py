"""1,000 malformed inputs, most through the client API and some through the ``continuum.start``
Celery task of a real worker: each is refused with an error naming the problem, nothing is written,
and the worker lives on to start and run a normal workflow afterwards."""

from __future__ import annotations

import datetime
import decimal
import functools
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from continuum_celery import (
    InvalidArgument,
    PayloadError,
    RunConflict,
    RunFinished,
    RunNotFound,
    UnknownWorkflow,
    get_run,
)
from continuum_celery.client import JournalRunHandle
from continuum_celery.serialization import DEFAULT_MAX_PAYLOAD_BYTES
from continuum_celery.workflows import get_workflow
from tests.chaos.faults import Phases
from tests.support.flows_chaos import waiter_flow
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.chaos

TABLES = (
    "continuum_runs",
    "continuum_events",
    "continuum_activity_tasks",
    "continuum_timers",
    "continuum_signals",
    "continuum_snapshots",
    "continuum_activity_results",
    "test_effects",
    "test_marks",
)
#: Values JSON cannot carry, with how the error names them.
BAD_LEAVES: list[tuple[Any, str]] = [
    (object(), "builtins.object"),
    ({1, 2}, "builtins.set"),
    (b"bytes", "builtins.bytes"),
    (bytearray(b"x"), "builtins.bytearray"),
    (float("nan"), "nan, which JSON cannot represent"),
    (float("inf"), "inf, which JSON cannot represent"),
    (float("-inf"), "-inf, which JSON cannot represent"),
    (datetime.datetime(2024, 1, 1), "datetime.datetime"),
    (datetime.date(2024, 1, 1), "datetime.date"),
    (decimal.Decimal("1.5"), "decimal.Decimal"),
    (complex(1, 2), "builtins.complex"),
    (range(3), "builtins.range"),
    (frozenset(), "builtins.frozenset"),
    (print, "builtin_function_or_method"),
    (Exception("x"), "builtins.Exception"),
    # JSON encodes these, but the journal could not store or read them back.
    ("caf\udce9", "holds the lone surrogate '\\udce9' at index 3"),
    (10**5000, "is an int of more than 4300 digits"),
]
BAD_KEYS: list[Any] = [1, 2.5, None, True, (1, 2)]
BAD_IDS: list[Any] = [
    "",
    " ",
    "-lead",
    ".lead",
    "_lead",
    "a b",
    "a/b",
    "a\\b",
    "a\n",
    "\na",
    "a\tb",
    "a#b",
    "a?b",
    "a%b",
    "é",
    "a€",
    "run😀",
    "x" * 129,
    "y" * 300,
    7,
    7.5,
    [],
    {},
    b"id",
    ("a",),
]
BAD_SIGNALS: list[Any] = [
    "",
    " ",
    "-go",
    ".go",
    "go now",
    "go/x",
    "go\n",
    "\ngo",
    "gé",
    "go#",
    "x" * 201,
    5,
    None,
    [],
    b"go",
    ("go",),
]


@dataclass(frozen=True)
class Case:
    """One malformed call: what it is, the call, the error it must raise, a pattern its message must match."""

    what: str
    call: Callable[[], Any]
    error: type[Exception]
    pattern: str


def _nested(leaf: Any, depth: int, key: str) -> Any:
    value = leaf
    for level in range(depth):
        value = {f"{key}{level}": value} if level % 2 else [0, value]
    return value


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


def client_cases(waiting: JournalRunHandle, finished: JournalRunHandle, client: Any) -> Iterator[Case]:
    """915 malformed calls of the client API, generated from the lists above."""
    start, call = waiter_flow.start, functools.partial
    where = re.escape(f"input of workflow {waiter_flow.name}")
    for i, (depth, (leaf, named)) in enumerate(itertools.product(range(16), BAD_LEAVES)):  # 272
        value = _nested(leaf, depth, f"k{i}_")
        yield Case(
            f"non-JSON {named} at depth {depth}", call(start, value), PayloadError, f"{where}.*{re.escape(named)}"
        )
    for key in BAD_KEYS:  # 5
        yield Case(f"key {key!r}", call(start, {"ok": 1, key: "v"}), PayloadError, "JSON object keys must be str")
    for depth in range(4):  # 4
        value = _nested({"ok": 1, "\udce9": "v"}, depth, "s_")
        yield Case(f"surrogate key at depth {depth}", call(start, value), PayloadError, "has a key that holds the lone")
    for levels in range(201, 206):  # 5
        yield Case(f"{levels} levels deep", call(start, _deep(levels)), PayloadError, "nested more than 200 levels")
    big = "x" * (DEFAULT_MAX_PAYLOAD_BYTES + 100)
    for cut in range(20):  # 20
        yield Case("oversized input", call(start, {"blob": big[cut:]}), PayloadError, r"over the \d+-byte limit")
    for i in range(64):  # 64
        name = f"unknown.flow_{i}"
        yield Case(f"unknown workflow {name}", call(get_workflow, name), UnknownWorkflow, re.escape(repr(name)))
    for i, bad in enumerate(itertools.islice(itertools.cycle(BAD_IDS), 200)):  # 200
        attempt = call(start, {"n": 1}, run_id=bad) if i % 2 else call(get_run, bad)
        yield Case(f"run id {bad!r}", attempt, InvalidArgument, r"run_id .* is malformed")
    for bad in itertools.islice(itertools.cycle(BAD_SIGNALS), 160):  # 160
        yield Case(f"signal name {bad!r}", call(waiting.signal, bad, 1), InvalidArgument, r"signal name .* malformed")
    for i in range(100):  # 100
        run_id = f"no-such-run-{i}"
        handle = JournalRunHandle(client, run_id)
        lookup: Callable[[], Any] = call(handle.signal, "go", 1) if i % 2 else call(get_run, run_id)
        yield Case(f"unknown run {run_id}", lookup, RunNotFound, re.escape(f"no run with id '{run_id}'"))
    for leaf, named in itertools.islice(itertools.cycle(BAD_LEAVES), 40):  # 40
        payload = {"v": [leaf]}
        yield Case(
            f"signal payload {named}", call(waiting.signal, "go", payload), PayloadError, "payload of signal 'go'"
        )
    for _ in range(15):  # 15
        yield Case("signal to a finished run", call(finished.signal, "go", 1), RunFinished, "is completed")
    for n in range(15):  # 15
        reuse = call(start, {"other": n}, run_id=waiting.id)
        yield Case("run id reused with another input", reuse, RunConflict, "already names a run")
    for i in range(15):  # a workflow's own signature, as a chain would carry it: refused before it is sent
        signature = call(waiter_flow.s, {"n": 1}, run_id=f"bad id {i}")
        yield Case("run id through .s()", signature, InvalidArgument, "is malformed")


def celery_cases(stack: Stack) -> Iterator[Case]:
    """85 malformed starts sent through the broker to the worker's ``continuum.start`` task."""
    app, name = stack.client().app, waiter_flow.name

    def send(*args: Any, **kwargs: Any) -> Callable[[], Any]:
        return functools.partial(app.send_task, "continuum.start", args=list(args), kwargs=kwargs)

    for i in range(25):
        yield Case("unknown workflow", send({"n": i}, workflow=f"unknown.flow_{i}"), UnknownWorkflow, f"flow_{i}'")
    for i in range(5):  # the broker carries it as a JSON escape; the worker refuses what it decodes to
        bad = {"file": f"caf\udce9-{i}"}
        yield Case("lone surrogate input", send(bad, workflow=name), PayloadError, "holds the lone surrogate")
    for i, bad in enumerate(BAD_IDS[:19] + BAD_IDS[:11]):
        yield Case(f"run id {bad!r}", send({"n": i}, workflow=name, run_id=bad), InvalidArgument, "is malformed")
    for n in range(2, 17):
        yield Case(f"{n} positional values", send(*range(n), workflow=name), InvalidArgument, f"got {n} positional")
    for levels in range(201, 209):
        yield Case(f"{levels} levels", send(_deep(levels), workflow=name), PayloadError, "nested more than 200 levels")
    for cut in range(2):
        blob = {"blob": "y" * (DEFAULT_MAX_PAYLOAD_BYTES + 10 + cut)}
        yield Case("oversized input", send(blob, workflow=name), PayloadError, r"over the \d+-byte limit")


def _rows(stack: Stack) -> dict[str, int]:
    return {table: stack.sql(f"SELECT count(*) AS n FROM {table}")[0].n for table in TABLES}


def _logged_failure(log: str, task_id: str) -> str | None:
    """The failure record of one task in a worker log: its line and traceback, up to the next record."""
    at = log.find(f"Task continuum.start[{task_id}] raised unexpected:")
    if at < 0:
        return None
    end = log.find("\n[", at + 1)
    return log[at : end if end > 0 else len(log)]


def test_malformed_inputs_are_refused_cleanly(chaos: Stack) -> None:
    phase = Phases("malformed")
    worker = chaos.worker("malformed-w")
    waiting = waiter_flow.start({"role": "waiting"}, run_id="waiting")
    finished = waiter_flow.start({"role": "finished"}, run_id="finished")
    finished.signal("go", "done")
    assert finished.result(timeout=60) == "done"
    wait_until(lambda: waiting.status() == "suspended", 60, "the waiting run to wait")
    before = _rows(chaos)

    refused = 0
    for case in client_cases(waiting, finished, chaos.client().client):
        with pytest.raises(case.error) as caught:
            case.call()
        assert re.search(case.pattern, str(caught.value), re.S), f"{case.what}: {caught.value}"
        refused += 1
    phase(f"{refused} malformed client calls refused")

    sent = [(case, case.call().id) for case in celery_cases(chaos)]
    wait_until(
        lambda: all(_logged_failure(worker.output(), task_id) for _, task_id in sent),
        120,
        "the worker to refuse every malformed start",
    )
    log = worker.output()
    for case, task_id in sent:
        record = _logged_failure(log, task_id) or ""
        assert f"{case.error.__module__}.{case.error.__qualname__}: " in record, f"{case.what}: {record[:500]}"
        assert re.search(case.pattern, record, re.S), f"{case.what}: {record[:500]}"
    phase(f"{len(sent)} malformed starts refused by the worker")

    assert refused + len(sent) == 1000
    assert _rows(chaos) == before
    # The worker lived through it and still starts and runs workflows, through Celery too.
    assert worker.popen.poll() is None
    waiter_flow.s({"role": "after"}, run_id="after-malformed").apply_async()
    wait_until(lambda: chaos.sql("SELECT 1 FROM continuum_runs WHERE id = 'after-malformed'"), 60, "the good start")
    after = get_run("after-malformed")
    after.signal("go", "fine")
    assert after.result(timeout=60) == "fine"
    assert worker.popen.poll() is None
