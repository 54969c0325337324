"""A hung broker (SIGSTOPped Redis: connections open, nothing answered) does not hold the caller.

``start()`` and ``signal()`` write the journal first; that is the promise. The publish that
follows has a deadline: the call returns while the broker is still stopped, and once it
resumes the sweep sends what was not sent. The run then completes, once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.audit import audit, wait_terminal
from tests.chaos.conftest import private_stack
from tests.chaos.faults import signal_all
from tests.chaos.servers import PrivateRabbitMQ, PrivateRedis
from tests.support.flows_chaos import waiter_flow
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.chaos


def _waiting(stack: Stack, run_id: str) -> bool:
    rows = stack.sql("SELECT count(*) AS n FROM continuum_timers WHERE run_id = :r AND kind = 'signal'", r=run_id)
    return rows[0].n == 1


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(fn())
        except Exception as exc:  # reported by the assertion below
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, outcome


@pytest.fixture(params=["redis", "rabbitmq"])
def hung_broker(request: pytest.FixtureRequest, fresh_pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Any]:
    """(stack, broker): a chaos stack whose broker is a private server the test may hang.

    A Redis broker also holds the wake-ups; with RabbitMQ they stay on the shared test Redis.
    """
    broker: PrivateRedis | PrivateRabbitMQ
    if request.param == "redis":
        broker = PrivateRedis(tmp_path)
    else:
        try:
            broker = PrivateRabbitMQ(tmp_path)
        except FileNotFoundError as exc:
            pytest.skip(str(exc))
    broker.start()
    try:
        if isinstance(broker, PrivateRedis):
            stack_of = private_stack(fresh_pg_url, broker.url, tmp_path)
        else:
            stack_of = private_stack(fresh_pg_url, redis_url, tmp_path, amqp_url=broker.url)
        with stack_of as stack:
            yield stack, broker
    finally:
        broker.close()


def test_start_and_signal_return_while_the_broker_hangs(hung_broker: Any) -> None:
    stack, broker = hung_broker
    stack.worker(concurrency=2)
    stack.beat()
    waiter_flow.start({}, run_id="before")
    wait_until(lambda: _waiting(stack, "before"), 60, "the first run to wait for its signal")

    with broker.hung():
        started, started_outcome = _in_thread(lambda: waiter_flow.start({}, run_id="during"))
        started.join(timeout=60)
        signalled, signalled_outcome = _in_thread(lambda: signal_all(stack, ["before"], "sent-while-hung"))
        signalled.join(timeout=60)
        # The calls came back with the broker still stopped (the block has not resumed it yet).
        returned = not started.is_alive() and not signalled.is_alive()
        journaled = stack.sql("SELECT count(*) AS n FROM continuum_runs WHERE id = 'during'")[0].n
        inbox = stack.sql("SELECT count(*) AS n FROM continuum_signals WHERE run_id = 'before'")[0].n

    assert returned, "start() or signal() blocked on the hung broker"
    outcomes = started_outcome + signalled_outcome
    assert len(outcomes) == 2 and not any(isinstance(o, Exception) for o in outcomes), outcomes
    assert journaled == 1 and inbox == 1  # the journal had them before the broker answered anything
    # The broker is back: the sweep sends the messages it missed, and each run goes on, once.
    wait_until(lambda: _waiting(stack, "during"), 90, "the run started during the hang to take its first step")
    signal_all(stack, ["during"], "after")
    wait_terminal(stack.sql, ["before", "during"], timeout=90)
    result = audit(stack.sql, expected=["before", "during"])
    result.assert_clean()
    assert result.states == {"completed": 2}
    handles = {r: stack.client().client.get(r).result(timeout=5) for r in ("before", "during")}
    assert handles == {"before": "sent-while-hung", "during": "after"}
