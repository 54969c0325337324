"""Defining workflows and activities: what is refused, with a message that says how to fix it."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from continuum_celery import RetryPolicy, activity, workflow
from continuum_celery.activities import get_activity
from continuum_celery.errors import DefinitionError, UnknownWorkflow
from continuum_celery.journal.task_rules import retry_delay
from continuum_celery.workflows import get_workflow


def unique(prefix: str) -> str:
    return f"tests.defs.{prefix}.{uuid.uuid4().hex[:8]}"


def one_arg(ctx):  # type: ignore[no-untyped-def]
    return ctx


def three_args(ctx, a, b):  # type: ignore[no-untyped-def]
    return a, b


def required_keyword(ctx, order, *, region):  # type: ignore[no-untyped-def]
    return region


async def asynchronous(ctx, order):  # type: ignore[no-untyped-def]
    return order


def generator(ctx, order):  # type: ignore[no-untyped-def]
    yield order


@pytest.mark.parametrize("fn", [one_arg, three_args, required_keyword])
def test_a_workflow_must_be_a_function_of_ctx_and_input(fn: Any) -> None:
    with pytest.raises(DefinitionError, match=r"must be a function of \(ctx, input\)") as caught:
        workflow(workflow=unique("sig"))(fn)
    assert "Pack several arguments into one dict input" in str(caught.value)


@pytest.mark.parametrize("fn", [asynchronous, generator])
def test_a_workflow_must_be_a_plain_function(fn: Any) -> None:
    with pytest.raises(DefinitionError, match="plain function of"):
        workflow(fn)


@pytest.mark.parametrize("version", [0, -1, "2"])
def test_a_workflow_version_must_be_a_positive_integer(version: Any) -> None:
    with pytest.raises(DefinitionError, match="positive integer"):
        workflow(workflow=unique("version"), version=version)(lambda ctx, order: order)


def test_a_workflow_works_bare_and_with_options() -> None:
    def flow(ctx: Any, order: Any) -> Any:
        return order

    bare = workflow(flow)
    named = workflow(workflow=unique("named"), version=3, saga=True)(flow)
    assert bare.name == f"{__name__}.test_a_workflow_works_bare_and_with_options.<locals>.flow"
    assert (named.version, named.saga, len(named.version_hash)) == (3, True, 16)
    assert get_workflow(named.name) is named
    assert bare(None, {"x": 1}) == {"x": 1}  # calling the definition still calls the function


def test_an_unknown_workflow_name_is_refused_listing_what_is_loaded() -> None:
    with pytest.raises(UnknownWorkflow, match="no workflow named 'tests.defs.absent'") as caught:
        get_workflow("tests.defs.absent")
    assert "imported by the worker" in str(caught.value)


def test_two_bodies_under_one_name_and_version_are_refused() -> None:
    name = unique("dup")

    def first(ctx: Any, order: Any) -> int:
        return 1

    def second(ctx: Any, order: Any) -> int:
        return 2

    workflow(workflow=name)(first)
    with pytest.raises(DefinitionError, match="Bump `version=`"):
        workflow(workflow=name)(second)
    assert workflow(workflow=name, version=2)(second).version == 2


def test_an_activity_name_belongs_to_one_function() -> None:
    name = unique("act")

    def charge(cents: int) -> int:
        return cents

    def other(cents: int) -> int:
        return -cents

    defined = activity(name=name)(charge)
    assert activity(name=name)(charge).fn is charge  # the same function again (a module imported twice)
    with pytest.raises(DefinitionError, match="already used by") as caught:
        activity(name=name)(other)
    assert "@activity(name=...)" in str(caught.value)
    assert get_activity(name) is not None and get_activity(name).fn is charge  # type: ignore[union-attr]
    assert defined(5) == 5


def test_activity_options_are_checked() -> None:
    async def coroutine(x: int) -> int:
        return x

    with pytest.raises(DefinitionError, match="plain"):
        activity(name=unique("async"))(coroutine)
    with pytest.raises(DefinitionError, match="positive number of seconds"):
        activity(name=unique("timeout"), timeout=0)(lambda x: x)
    with pytest.raises(DefinitionError, match=r"heartbeat_timeout='10'\): use a positive number of seconds"):
        activity(name=unique("beat"), heartbeat_timeout="10")(lambda x: x)  # type: ignore[arg-type]
    assert activity(name=unique("beat"), heartbeat_timeout=timedelta(seconds=30))(lambda x: x).heartbeat_timeout == 30


def test_an_activity_takes_one_compensation() -> None:
    act = activity(name=unique("undo"))(lambda x: x)
    act.compensate(lambda result, x: None)
    with pytest.raises(DefinitionError, match="already has a compensation"):
        act.compensate(lambda result, x: None)


@pytest.mark.parametrize(
    "options",
    [{"max_attempts": 0}, {"initial_interval": -1}, {"backoff": 0.5}, {"max_interval": -1}],
)
def test_a_retry_policy_must_make_sense(options: dict[str, Any]) -> None:
    with pytest.raises(DefinitionError):
        RetryPolicy(**options)


def test_a_policy_and_the_journal_agree_on_every_delay() -> None:
    policy = RetryPolicy(max_attempts=6, initial_interval=1.5, backoff=3.0, max_interval=20.0)
    delays = [policy.delay_before(attempt) for attempt in range(2, 7)]
    assert delays == [1.5, 4.5, 13.5, 20.0, 20.0]
    assert delays == [retry_delay(policy.to_json(), failed) for failed in range(1, 6)]
    assert policy.to_json()["non_retryable"] == []
    assert RetryPolicy(non_retryable=(KeyError,)).to_json()["non_retryable"] == ["builtins:KeyError"]
