"""Turning a Celery canvas into a durable plan: what maps, and what is refused before anything runs."""

from __future__ import annotations

import pytest
from celery import Celery, chain, chord, group

from continuum_celery.durable import plan_of
from continuum_celery.errors import InvalidArgument, PayloadError

app = Celery("plan-tests", set_as_current=False)


@app.task(name="t.a", shared=False)
def a(x: int) -> int:
    return x


@app.task(name="t.b", shared=False)
def b(*xs: int) -> int:
    return sum(xs)


def task(name: str, *args: object, immutable: bool = False, queue: str | None = None) -> dict:
    return {"kind": "task", "name": name, "args": list(args), "kwargs": {}, "immutable": immutable, "queue": queue}


def test_a_chain_a_group_then_a_task_is_a_chord_inside_a_chain() -> None:
    plan = plan_of(chain(a.s(1), group(b.s(), b.s(2)), a.s()))
    assert plan == {
        "kind": "chain",
        "steps": [task("t.a", 1), {"kind": "chord", "header": [task("t.b"), task("t.b", 2)], "body": task("t.a")}],
    }


def test_nested_chains_flatten_and_options_that_map_are_kept() -> None:
    plan = plan_of(chain(chain(a.s(1), a.si(2)), b.s().set(queue="q")))
    assert plan == {"kind": "chain", "steps": [task("t.a", 1), task("t.a", 2, immutable=True), task("t.b", queue="q")]}
    assert plan_of(chord([a.s(1)], b.s()))["kind"] == "chord"


def test_keyword_arguments_named_like_call_options_are_the_tasks_own() -> None:
    # The step's options travel apart from its arguments (activity_options), so no name is reserved.
    kwargs = {"retry": 3, "queue": "q", "timeout": 1, "idempotency_key": "k"}
    assert plan_of(a.s(1, **kwargs)) == {**task("t.a", 1), "kwargs": kwargs}


@pytest.mark.parametrize(
    "sig, named",
    [
        (a.s(1).set(countdown=5), "countdown"),
        (a.s(1).set(link=b.s()), "link"),
        (a.s(1).set(link_error=b.s()), "link_error"),
        (a.s(1).set(task_id="x"), "task_id"),
        (group(a.s(1)).set(priority=3), "priority"),
    ],
)
def test_options_the_journal_owns_are_refused(sig: object, named: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"sets \['{named}'\].*Remove them"):
        plan_of(sig)


def test_unmappable_canvases_are_refused_with_the_fix() -> None:
    with pytest.raises(InvalidArgument, match="celery.chunks signatures .* not supported"):
        plan_of(a.chunks([(1,), (2,)], 1))
    with pytest.raises(InvalidArgument, match="is empty"):
        plan_of(group([]))
    with pytest.raises(InvalidArgument, match="needs a Celery signature"):
        plan_of(a)
    with pytest.raises(PayloadError, match="arguments of t.a in durable"):
        plan_of(a.s({1, 2}))
