"""``ctx.patched`` / ``ctx.deprecate_patch`` on plain event lists, and ``compatible_with``.

An in-place edit guarded by ``patched`` must replay old histories on the old
branch and run new ones on the new branch; the edited body gets a new hash and
serves old runs only through an explicit ``compatible_with`` declaration.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from continuum_celery import activity, workflow
from continuum_celery.context import RunInfo, context_factory
from continuum_celery.errors import DefinitionError, NondeterminismError
from continuum_celery.events import Event, Kind
from continuum_celery.replay import Complete, Decision, Execution, Fail
from continuum_celery.versioning import Registry

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
OLD_HASH, OTHER_HASH = "0123456789abcdef", "fedcba9876543210"


@activity(name="tests.patched.old_step")
def old_step() -> int:
    return 1


@activity(name="tests.patched.new_step")
def new_step() -> int:
    return 2


def replay(body: Callable[[Any, Any], Any], events: list[Event]) -> Decision:
    execution = Execution(body, None, context_factory(RunInfo("run-1", "tests.patched", OLD_HASH)), run_id="run-1")
    try:
        return execution.advance([Event(1, Kind.RUN_STARTED, payload={"input": None}), *events], NOW)
    finally:
        execution.close()


def scheduled(seq: int, cid: int, step: Any) -> Event:
    return Event(seq, Kind.ACTIVITY_SCHEDULED, cid, step.name, {"args": [], "kwargs": {}})


def completed(seq: int, cid: int, step: Any, result: Any) -> Event:
    return Event(seq, Kind.ACTIVITY_COMPLETED, cid, step.name, {"result": result, "attempts": 1})


def marker(seq: int, cid: int, patch_id: str) -> Event:
    return Event(seq, Kind.PATCH_MARKER, cid, patch_id, {})


def guarded(ctx: Any, _: Any) -> Any:
    if ctx.patched("tax-v2"):
        return ctx.run(new_step)
    return ctx.run(old_step)


def shape(decision: Decision) -> list[tuple[str, int | None, str | None]]:
    return [(c.kind.value, c.command_id, c.name) for c in decision.commands]


def test_a_new_run_records_the_marker_and_takes_the_new_branch() -> None:
    decision = replay(guarded, [])
    assert shape(decision) == [("patch_marker", 1, "tax-v2"), ("activity_scheduled", 2, new_step.name)]
    assert decision.outcome is None


def test_an_old_history_without_the_marker_takes_the_old_branch() -> None:
    finished = replay(guarded, [scheduled(2, 1, old_step), completed(3, 1, old_step, 5)])
    assert (shape(finished), finished.outcome) == ([], Complete(5))

    waiting = replay(guarded, [scheduled(2, 1, old_step)])
    assert (shape(waiting), waiting.outcome) == ([], None)


def test_a_history_with_the_marker_replays_the_new_branch_without_recording_it_again() -> None:
    decision = replay(guarded, [marker(2, 1, "tax-v2"), scheduled(3, 2, new_step), completed(4, 2, new_step, 7)])
    assert (shape(decision), decision.outcome) == ([], Complete(7))


def bonus(ctx: Any, _: Any) -> Any:
    total = ctx.run(old_step)
    if ctx.patched("bonus"):
        total += 100
    return total


def test_a_finished_history_takes_the_old_branch_even_after_its_last_command() -> None:
    history = [scheduled(2, 1, old_step), completed(3, 1, old_step, 5)]
    ended = replay(bonus, [*history, Event(4, Kind.RUN_COMPLETED, payload={"result": 5})])
    assert (shape(ended), ended.outcome) == ([], Complete(5))
    # The same run reaching the patch live (it had not ended yet) takes the new branch.
    live = replay(bonus, history)
    assert (shape(live), live.outcome) == ([("patch_marker", 2, "bonus")], Complete(105))


def test_the_first_answer_holds_for_the_rest_of_the_run() -> None:
    def asks_twice(ctx: Any, _: Any) -> Any:
        first = ctx.patched("p")
        value = ctx.run(old_step)
        return [first, ctx.patched("p"), value]

    old = replay(asks_twice, [scheduled(2, 1, old_step), completed(3, 1, old_step, 1)])
    assert (shape(old), old.outcome) == ([], Complete([False, False, 1]))
    new = replay(asks_twice, [])
    assert shape(new) == [("patch_marker", 1, "p"), ("activity_scheduled", 2, old_step.name)]


def retired(ctx: Any, _: Any) -> Any:
    ctx.deprecate_patch("tax-v2")
    return ctx.run(new_step)


def test_deprecate_patch_replays_marked_histories_and_records_nothing_new() -> None:
    marked = replay(retired, [marker(2, 1, "tax-v2"), scheduled(3, 2, new_step), completed(4, 2, new_step, 7)])
    assert (shape(marked), marked.outcome) == ([], Complete(7))
    fresh = replay(retired, [])
    assert shape(fresh) == [("activity_scheduled", 1, new_step.name)]


def test_dropping_the_patch_call_breaks_histories_that_recorded_the_marker() -> None:
    def dropped(ctx: Any, _: Any) -> Any:
        return ctx.run(new_step)

    with pytest.raises(NondeterminismError, match="patch_marker 'tax-v2'"):
        replay(dropped, [marker(2, 1, "tax-v2"), scheduled(3, 2, new_step)])


def test_an_empty_patch_id_fails_the_run_with_a_clear_error() -> None:
    decision = replay(lambda ctx, _: ctx.patched(""), [])
    assert isinstance(decision.outcome, Fail)
    assert decision.outcome.error["type"] == "InvalidArgument"
    assert "non-empty str" in decision.outcome.error["message"]
    assert decision.commands == []


# ---- compatible_with ---------------------------------------------------------------------


class Defn:
    def __init__(self, version: int, version_hash: str, compatible_with: tuple[str, ...] = ()) -> None:
        self.name, self.version, self.version_hash = "tests.patched.flow", version, version_hash
        self.compatible_with = compatible_with
        self.fn = guarded


def test_the_registry_serves_declared_old_hashes_with_the_edited_body() -> None:
    reg = Registry()
    edited = Defn(1, "aaaaaaaaaaaaaaaa", compatible_with=(OLD_HASH,))
    reg.register(edited)
    assert reg.find(edited.name, OLD_HASH) is edited
    assert reg.get(edited.name, OLD_HASH) is edited
    assert reg.find(edited.name, OTHER_HASH) is None
    assert [(d.version, h) for d, h in reg.served()] == [(1, "aaaaaaaaaaaaaaaa"), (1, OLD_HASH)]

    original = Defn(2, OLD_HASH)  # the exact body, when loaded, wins
    reg.register(original)
    assert reg.find(edited.name, OLD_HASH) is original
    assert [h for _, h in reg.served()] == ["aaaaaaaaaaaaaaaa", OLD_HASH]


def test_two_bodies_claiming_one_old_hash_are_refused() -> None:
    reg = Registry()
    first = Defn(1, "aaaaaaaaaaaaaaaa", compatible_with=(OLD_HASH,))
    reg.register(first)
    with pytest.raises(DefinitionError, match=f"compatible_with='{OLD_HASH}'.*Keep the declaration on one"):
        reg.register(Defn(2, "bbbbbbbbbbbbbbbb", compatible_with=(OLD_HASH,)))
    assert reg.definitions() == [first]


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (OLD_HASH, "must be a tuple of version hashes"),
        (("not-a-hash",), "not version hashes"),
        ((OLD_HASH.upper(),), "not version hashes"),
    ],
)
def test_a_malformed_declaration_is_refused_before_registering(declared: Any, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):

        @workflow(workflow="tests.patched.malformed", compatible_with=declared)
        def flow(ctx: Any, _: Any) -> None:
            return None

    from continuum_celery.versioning import registry

    assert "tests.patched.malformed" not in registry.names()


def test_the_decorator_records_the_declaration() -> None:
    @workflow(workflow="tests.patched.declared", compatible_with=[OTHER_HASH, OLD_HASH, OLD_HASH])
    def flow(ctx: Any, _: Any) -> None:
        return None

    from continuum_celery.versioning import registry

    assert flow.compatible_with == (OLD_HASH, OTHER_HASH)
    assert registry.find("tests.patched.declared", OLD_HASH) is flow


@pytest.mark.parametrize("hashes", [("3f2a9c0d1e4b5a67\n",), ("3F2A9C0D1E4B5A67",), ("3f2a9c0d1e4b5a6",)])
def test_compatible_with_refuses_anything_but_exact_version_hashes(hashes: tuple[str, ...]) -> None:
    from continuum_celery.versioning import check_compatible_with

    with pytest.raises(DefinitionError, match="not version hashes"):
        check_compatible_with(hashes, "tests.flow")
    assert check_compatible_with(("3f2a9c0d1e4b5a67",), "tests.flow") == ("3f2a9c0d1e4b5a67",)
