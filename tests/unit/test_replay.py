"""The pure replay engine on plain lists of events: no journal, no Celery.

``Live`` plays the journal's part the way the stepper does: it appends each
decision's commands, lets the test append outcomes, and advances the execution
by only the new events. A finished history replayed in a fresh execution must
reproduce the same decision without issuing a single new command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from continuum_celery import (
    ActivityFailed,
    ChildTimeout,
    NondeterminismError,
    RunCancelled,
    WorkflowTimeout,
    activity,
    workflow,
)
from continuum_celery.context import RunInfo, context_factory
from continuum_celery.events import Event, Kind, NewEvent
from continuum_celery.replay import Cancelled, Complete, ContinueAsNew, Decision, Execution, Fail, replay_history
from continuum_celery.serialization import dumps

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
INFO = RunInfo("run-replay", "tests.replay.flow", "hash-1")
ERROR = {"type": "ConnectionError", "module": "builtins", "message": "down"}


@activity(name="tests.replay.add")
def add(a: int, b: int) -> int:
    return a + b


@activity(name="tests.replay.mul")
def mul(a: int, b: int) -> int:
    return a * b


@activity(name="tests.replay.reserve")
def reserve(item: str) -> str:
    return f"hold-{item}"


@reserve.compensate
def release(hold: str, item: str) -> None:
    del hold, item


@activity(name="tests.replay.charge")
def charge(cents: int) -> dict[str, int]:
    return {"charged": cents}


@charge.compensate
def refund(receipt: dict[str, int], cents: int) -> None:
    del receipt, cents


class Live:
    """An execution and the history it lives through."""

    def __init__(self, fn: Callable[[Any, Any], Any], input: Any = None, *, saga: bool = False) -> None:
        self.fn, self.input, self.saga = fn, input, saga
        self.events = [Event(1, Kind.RUN_STARTED, payload={"input": input})]
        self.execution = Execution(fn, input, context_factory(INFO), saga=saga, run_id=INFO.run_id)

    def step(self, now: datetime = NOW) -> Decision:
        """Advance by the new events; journal the decision's commands as the stepper would."""
        decision = self.execution.advance([e for e in self.events if e.seq > self.execution.last_seq], now)
        for cmd in decision.commands:
            self.add(cmd.kind, cmd.command_id, cmd.name, **cmd.payload)
        self.execution.acknowledge(len(self.events))
        return decision

    def add(self, kind: Kind, command_id: int | None = None, name: str | None = None, **payload: Any) -> None:
        self.events.append(Event(len(self.events) + 1, kind, command_id, name, payload))

    def done(self, command_id: int, result: Any, name: str = "tests.replay.add") -> None:
        self.add(Kind.ACTIVITY_COMPLETED, command_id, name, result=result, attempts=1)

    def replay(self, fn: Callable[[Any, Any], Any] | None = None) -> Decision:
        """The whole history in a fresh execution (``fn`` replaces the body, as a deploy would)."""
        fn = fn or self.fn
        later = NOW + timedelta(days=1)
        return replay_history(
            fn, self.input, self.events, context_factory(INFO), later, saga=self.saga, run_id=INFO.run_id
        )


@pytest.fixture
def live() -> Iterator[Callable[..., Live]]:
    made: list[Live] = []

    def make(fn: Callable[[Any, Any], Any], input: Any = None, **kw: Any) -> Live:
        made.append(Live(fn, input, **kw))
        return made[-1]

    yield make
    for run in made:
        run.execution.close()


def shape(commands: list[NewEvent]) -> list[tuple[str, int | None, str | None]]:
    return [(c.kind.value, c.command_id, c.name) for c in commands]


def everything(ctx: Any, n: int) -> dict[str, Any]:
    total = ctx.run(add, n, 1)
    fanned = ctx.gather([ctx.start_activity(add, total, i) for i in range(3)])
    stamp, ident, dice = ctx.now(), ctx.uuid4(), ctx.random()
    ctx.sleep(30)
    approval = ctx.wait_signal("approve", timeout=60)
    return {"fanned": fanned, "stamp": stamp.isoformat(), "id": str(ident), "dice": dice, "approval": approval}


def test_a_body_issues_its_commands_and_advances_on_outcomes(live: Callable[..., Live]) -> None:
    run = live(everything, 4)
    first = run.step()
    assert shape(first.commands) == [("activity_scheduled", 1, "tests.replay.add")] and first.outcome is None
    assert first.commands[0].payload["args"] == [4, 1]
    run.done(1, 5)
    assert shape(run.step().commands) == [("activity_scheduled", cid, "tests.replay.add") for cid in (2, 3, 4)]
    run.done(4, 7)
    assert run.step() == Decision([], None)  # gather waits for all three
    run.done(2, 5)
    run.done(3, 6)
    decision = run.step()
    assert shape(decision.commands) == [
        ("side_effect", 5, "now"),
        ("side_effect", 6, "uuid4"),
        ("side_effect", 7, "random"),
        ("timer_scheduled", 8, None),
    ]
    assert decision.commands[0].payload == {"value": NOW.isoformat()}
    assert decision.commands[3].payload == {"fire_at": (NOW + timedelta(seconds=30)).isoformat()}
    run.add(Kind.TIMER_FIRED, 8)
    later = NOW + timedelta(seconds=31)
    waiting = run.step(later)
    assert shape(waiting.commands) == [("signal_wait", 9, "approve")]
    assert waiting.commands[0].payload == {"timeout_at": (later + timedelta(seconds=60)).isoformat()}
    run.add(Kind.SIGNAL_RECEIVED, 9, "approve", payload={"by": "ann"})
    end = run.step()
    assert isinstance(end.outcome, Complete) and end.commands == []
    result = end.outcome.result
    assert result["fanned"] == [5, 6, 7] and result["approval"] == {"by": "ann"}
    assert result["stamp"] == NOW.isoformat()

    again = run.replay()
    assert again.commands == [] and again == end  # same values from the journal: clock, uuid, random


def test_a_changed_body_is_nondeterminism_and_the_execution_is_dead(live: Callable[..., Live]) -> None:
    def before(ctx: Any, _: Any) -> int:
        return ctx.run(add, 1, 2) + ctx.run(add, 3, 4)

    def after(ctx: Any, _: Any) -> int:
        return ctx.run(add, 1, 2) + ctx.run(mul, 3, 4)

    run = live(before)
    run.step()
    run.done(1, 3)
    run.step()
    execution = Execution(after, None, context_factory(INFO), run_id=INFO.run_id)
    with pytest.raises(NondeterminismError) as caught:
        execution.advance(run.events, NOW)
    err = caught.value
    assert err.run_id == INFO.run_id and err.seq == 4
    assert "tests.replay.add" in err.recorded and "(command 2)" in err.recorded
    assert "tests.replay.mul" in err.requested
    assert INFO.run_id in str(err) and "ctx.patched" in str(err)
    assert execution.finished
    with pytest.raises(RuntimeError):
        execution.advance([], NOW)


def test_a_body_that_waits_where_the_history_has_a_command_is_nondeterminism(live: Callable[..., Live]) -> None:
    def before(ctx: Any, _: Any) -> list[int]:
        return ctx.gather([ctx.start_activity(add, 1, 1), ctx.start_activity(add, 2, 2)])

    def after(ctx: Any, _: Any) -> int:
        return ctx.start_activity(add, 1, 1).result()

    run = live(before)
    run.step()
    with pytest.raises(NondeterminismError) as caught:
        run.replay(after)
    assert caught.value.seq == 3 and "a wait on activity tests.replay.add" in caught.value.requested


def test_catching_exception_cannot_swallow_nondeterminism(live: Callable[..., Live]) -> None:
    def before(ctx: Any, _: Any) -> int:
        return ctx.run(add, 1, 2)

    def swallowing(ctx: Any, _: Any) -> str:
        try:
            ctx.sleep(5)
        except Exception:
            return "swallowed"
        return "slept"

    run = live(before)
    run.step()
    with pytest.raises(NondeterminismError):
        run.replay(swallowing)


def cancellable(ctx: Any, _: Any) -> dict[str, Any]:
    first = ctx.run(add, 1, 1)
    try:
        ctx.run(add, first, 1)
        where = "never"
    except RunCancelled:
        where = "second call"
    cleanup = ctx.run(add, 10, 0)  # a wait after the cancel: it is raised once per run
    return {"where": where, "cleanup": cleanup}


@pytest.mark.parametrize("same_step", [True, False], ids=["cancel-with-the-result", "cancel-in-a-later-step"])
def test_a_cancel_is_revealed_lazily_once_and_at_the_same_point_on_replay(
    live: Callable[..., Live], same_step: bool
) -> None:
    run = live(cancellable)
    run.step()
    run.done(1, 2)
    if same_step:  # the cancel sits after an outcome the body consumes first
        run.add(Kind.CANCEL_REQUESTED)
        assert shape(run.step().commands) == [("activity_scheduled", c, "tests.replay.add") for c in (2, 3)]
    else:
        assert shape(run.step().commands) == [("activity_scheduled", 2, "tests.replay.add")]
        run.add(Kind.CANCEL_REQUESTED)
        run.add(Kind.ACTIVITY_FAILED, 2, "tests.replay.add", error=ERROR, attempts=0)
        assert shape(run.step().commands) == [("activity_scheduled", 3, "tests.replay.add")]
    run.add(Kind.CANCEL_REQUESTED)  # even a second record of it is not raised again
    run.done(3, 10)
    end = run.step()
    assert end.outcome == Complete({"where": "second call", "cleanup": 10})
    assert run.replay() == Decision([], end.outcome)


def test_an_uncaught_cancel_ends_the_run_cancelled(live: Callable[..., Live]) -> None:
    run = live(lambda ctx, _: ctx.run(add, 1, 1))
    run.step()
    run.add(Kind.CANCEL_REQUESTED)
    end = run.step()
    assert isinstance(end.outcome, Cancelled) and end.outcome.error["type"] == "RunCancelled"
    assert end.outcome.error["message"] == f"run {INFO.run_id} was cancelled"
    again = run.replay()
    assert again.commands == [] and isinstance(again.outcome, Cancelled)
    assert again.outcome.error["message"] == end.outcome.error["message"]


def patched_body(ctx: Any, _: Any) -> int:
    if ctx.patched("bigger-sum"):
        return ctx.run(add, 2, 2)
    return ctx.run(add, 1, 1)


def test_patched_is_true_on_a_new_run_and_false_on_an_old_history(live: Callable[..., Live]) -> None:
    new = live(patched_body)
    first = new.step()
    assert shape(first.commands) == [("patch_marker", 1, "bigger-sum"), ("activity_scheduled", 2, "tests.replay.add")]
    assert first.commands[1].payload["args"] == [2, 2]
    new.done(2, 4)
    assert new.step().outcome == Complete(4)
    assert new.replay() == Decision([], Complete(4))

    old = live(lambda ctx, _: ctx.run(add, 1, 1))
    old.step()
    old.done(1, 2)
    assert old.step().outcome == Complete(2)
    assert old.replay(patched_body) == Decision([], Complete(2))  # the old run keeps the old branch

    def retired(ctx: Any, _: Any) -> int:
        ctx.deprecate_patch("bigger-sum")
        return ctx.run(add, 2, 2)

    assert new.replay(retired) == Decision([], Complete(4))


def test_continue_as_new_ends_the_run_with_the_next_input(live: Callable[..., Live]) -> None:
    run = live(lambda ctx, n: ctx.continue_as_new({"n": ctx.run(add, n, 1)}), 1)
    run.step()
    run.done(1, 2)
    assert run.step().outcome == ContinueAsNew({"n": 2})
    assert run.replay().outcome == ContinueAsNew({"n": 2})


def gathered(ctx: Any, tolerant: bool) -> Any:
    futures = [ctx.start_activity(add, 1, 1), ctx.start_activity(mul, 2, 2)]
    if tolerant:
        outcomes = ctx.gather(futures, return_exceptions=True)
        return [r if not isinstance(r, ActivityFailed) else r.attempts for r in outcomes]
    try:
        return ctx.gather(futures)
    except ActivityFailed as exc:
        return {"failed": exc.activity}


@pytest.mark.parametrize("tolerant", [True, False])
def test_gather_waits_for_all_then_returns_or_raises_the_failure(live: Callable[..., Live], tolerant: bool) -> None:
    run = live(gathered, tolerant)
    run.step()
    run.add(Kind.ACTIVITY_FAILED, 1, "tests.replay.add", error=ERROR, attempts=3)
    assert run.step() == Decision([], None)  # the failure is known, but mul is still running
    run.done(2, 4, name="tests.replay.mul")
    expected = [3, 4] if tolerant else {"failed": "tests.replay.add"}
    assert run.step().outcome == Complete(expected)
    assert run.replay().outcome == Complete(expected)


def saga(ctx: Any, twice: bool) -> None:
    ctx.gather([ctx.start_activity(reserve, "seat"), ctx.start_activity(charge, 500), ctx.start_activity(add, 1, 1)])
    if twice:
        ctx.compensate()
    ctx.run(mul, 0, 0)


@pytest.mark.parametrize("twice", [False, True], ids=["on-failure", "explicit-then-on-failure"])
def test_a_saga_compensates_in_reverse_completion_order_each_once(live: Callable[..., Live], twice: bool) -> None:
    run = live(saga, twice, saga=True)
    run.step()
    run.done(2, {"charged": 500}, name="tests.replay.charge")
    run.done(3, 2)
    run.done(1, "hold-seat", name="tests.replay.reserve")
    if not twice:
        run.step()
        run.add(Kind.ACTIVITY_FAILED, 4, "tests.replay.mul", error=ERROR, attempts=1)
    undo = 4 if twice else 5  # the first compensation's command id
    first = run.step()
    assert shape(first.commands)[-1] == ("compensation_scheduled", undo, "tests.replay.reserve")
    assert first.commands[-1].payload["for_command"] == 1 and first.commands[-1].payload["result"] == "hold-seat"
    run.add(Kind.COMPENSATION_COMPLETED, undo, "tests.replay.reserve", result=None, attempts=1)
    second = run.step()  # one compensation at a time
    assert shape(second.commands) == [("compensation_scheduled", undo + 1, "tests.replay.charge")]
    assert second.commands[0].payload["result"] == {"charged": 500}
    run.add(Kind.COMPENSATION_FAILED, undo + 1, "tests.replay.charge", error=ERROR, attempts=2)
    decision = run.step()
    if twice:  # the body goes on to its failing call; the saga then finds nothing left to undo
        assert shape(decision.commands) == [("activity_scheduled", 6, "tests.replay.mul")]
        run.add(Kind.ACTIVITY_FAILED, 6, "tests.replay.mul", error=ERROR, attempts=1)
        decision = run.step()
    assert decision.commands == []
    assert isinstance(decision.outcome, Fail) and decision.outcome.error["type"] == "ActivityFailed"
    undone = decision.outcome.error["compensations"]
    if twice:
        assert undone == []
    else:
        assert [(c["activity"], c["command_id"], c["ok"]) for c in undone] == [
            ("tests.replay.reserve", 1, True),
            ("tests.replay.charge", 2, False),
        ]
        assert undone[1]["error"] == ERROR
    kinds = [e.kind for e in run.events]
    assert kinds.count(Kind.COMPENSATION_SCHEDULED) == 2
    assert run.replay().commands == []


def approval(ctx: Any, n: int) -> int:
    """The recorded body: activity, signal wait, activity."""
    first = ctx.run(add, n, 1)
    extra = ctx.wait_signal("go")
    return ctx.run(add, first, extra)


def _returns_early(ctx: Any, n: int) -> int:
    return ctx.run(add, n, 1)


def _raises_early(ctx: Any, n: int) -> int:
    ctx.run(add, n, 1)
    raise ValueError("no approval needed any more")


def _continues_early(ctx: Any, n: int) -> Any:
    return ctx.continue_as_new(ctx.run(add, n, 1))


@pytest.mark.parametrize(
    ("body", "ended"),
    [(_returns_early, "returned"), (_raises_early, "raised ValueError"), (_continues_early, "continued as new")],
    ids=["returns", "raises", "continues"],
)
@pytest.mark.parametrize("finished", [False, True], ids=["waiting-history", "finished-history"])
def test_a_body_that_ends_before_its_recorded_commands_is_nondeterminism(
    live: Callable[..., Live], body: Callable[[Any, Any], Any], ended: str, finished: bool
) -> None:
    run = live(approval, 1)
    run.step()
    run.done(1, 2)
    run.step()
    run.add(Kind.SIGNAL_RECEIVED, 2, "go", payload=3)
    if finished:
        run.step()
        run.done(3, 5)
        assert run.step().outcome == Complete(5)
    history = list(run.events)

    # A fresh execution of the new body, as a worker without the run cached would replay it.
    execution = Execution(body, 1, context_factory(INFO), run_id=INFO.run_id)
    with pytest.raises(NondeterminismError) as caught:
        execution.advance(history, NOW)
    err = caught.value
    assert (err.run_id, err.seq) == (INFO.run_id, 4)  # the signal wait, the first command left unmatched
    more = " and 1 more recorded command(s)" if finished else ""
    assert err.recorded == f"signal_wait 'go' (command 2){more}"
    assert err.requested == f"nothing more (the body {ended})"
    assert f"run {INFO.run_id}: at event 4 the history holds signal_wait 'go'" in str(err)
    assert execution.finished and run.events == history  # nothing decided, nothing appended


def test_a_body_that_ends_having_matched_every_command_is_not_nondeterminism(live: Callable[..., Live]) -> None:
    run = live(approval, 1)
    run.step()
    run.done(1, 2)
    run.step()
    run.add(Kind.SIGNAL_RECEIVED, 2, "go", payload=3)
    run.step()
    run.done(3, 5)
    assert run.step().outcome == Complete(5)

    def cleaned_up(ctx: Any, n: int) -> int:  # another result, the same commands: for replay-check to judge
        first = ctx.run(add, n, 1)
        return ctx.run(add, first, ctx.wait_signal("go")) * 10

    assert run.replay(cleaned_up) == Decision([], Complete(50))


@pytest.mark.parametrize(
    ("call", "where"),
    [
        (lambda ctx: ctx.wait_signal("caf\udce9"), "command 2 (signal_wait) of run run-replay['name']"),
        (lambda ctx: ctx.patched("caf\udce9"), "command 2 (patch_marker) of run run-replay['name']"),
        (lambda ctx: ctx.start_activity(add.options(queue="q\udce9"), 1, 1), "['payload']['queue']"),
        (lambda ctx: ctx.run(add, "caf\udce9", 1), "arguments of activity tests.replay.add[0] holds the lone"),
        (lambda ctx: ctx.run(add, a=1, b=10**5000), "keyword arguments of activity tests.replay.add['b'] is an int"),
    ],
    ids=["signal-name", "patch-id", "queue", "argument", "keyword-argument"],
)
def test_a_command_the_journal_cannot_store_fails_the_body_with_payload_error(
    live: Callable[..., Live], call: Callable[[Any], Any], where: str
) -> None:
    def body(ctx: Any, _: Any) -> Any:
        ctx.run(add, 1, 1)
        return call(ctx)

    run = live(body)
    run.step()
    run.done(1, 2)
    end = run.step()
    assert end.commands == []  # nothing the journal would refuse
    assert isinstance(end.outcome, Fail) and end.outcome.error["type"] == "PayloadError"
    assert where in end.outcome.error["message"]
    assert run.replay() == Decision([], end.outcome)


def test_a_body_failing_with_a_lone_surrogate_fails_with_a_storable_error(live: Callable[..., Live]) -> None:
    def body(ctx: Any, _: Any) -> None:
        ctx.run(add, 1, 1)
        raise ValueError("caf\udce9")

    run = live(body)
    run.step()
    run.done(1, 2)
    end = run.step()
    assert isinstance(end.outcome, Fail) and end.outcome.error["message"] == "caf\\udce9"
    dumps(end.outcome.error).encode("utf-8")  # the commit encodes it so


def test_a_workflow_timeout_fails_the_run_after_the_saga_compensates(live: Callable[..., Live]) -> None:
    def booking(ctx: Any, _: Any) -> str:
        ctx.run(charge, 500)
        ctx.sleep(3600)
        return "done"

    run = live(booking, saga=True)
    run.step()
    run.done(1, {"charged": 500}, name="tests.replay.charge")
    run.step()  # now asleep
    run.add(Kind.RUN_TIMED_OUT, deadline="2030-01-01T00:01:00+00:00")
    undo = run.step()
    assert shape(undo.commands) == [("compensation_scheduled", 3, "tests.replay.charge")]
    run.add(Kind.COMPENSATION_COMPLETED, 3, "tests.replay.charge", result=None, attempts=1)
    end = run.step()
    assert isinstance(end.outcome, Fail) and end.outcome.error["type"] == "WorkflowTimeout"
    assert "deadline 2030-01-01T00:01:00+00:00" in end.outcome.error["message"]
    assert [c["ok"] for c in end.outcome.error["compensations"]] == [True]
    assert run.replay() == Decision([], end.outcome)


def test_a_body_may_catch_its_workflow_timeout_once(live: Callable[..., Live]) -> None:
    def patient(ctx: Any, _: Any) -> str:
        try:
            ctx.sleep(3600)
        except WorkflowTimeout:
            return ctx.run(add, 1, 1)
        return "slept"

    run = live(patient)
    run.step()
    run.add(Kind.RUN_TIMED_OUT, deadline="2030-01-01T00:01:00+00:00")
    assert shape(run.step().commands) == [("activity_scheduled", 2, "tests.replay.add")]
    run.done(2, 2)
    assert run.step().outcome == Complete(2)


@workflow(workflow="tests.replay.child")
def child_flow(ctx: Any, x: Any) -> Any:
    return x


@pytest.mark.parametrize("first", ["timer", "child"])
def test_a_child_wait_with_a_timeout_raises_child_timeout_and_the_child_goes_on(
    live: Callable[..., Live], first: str
) -> None:
    def parent(ctx: Any, _: Any) -> Any:
        child = ctx.start_child(child_flow, 5)
        try:
            return child.result(timeout=60)
        except ChildTimeout as exc:
            assert exc.run_id == child.id and exc.workflow == "tests.replay.child"
            return {"late": child.result()}

    run = live(parent)
    assert shape(run.step().commands) == [("child_started", 1, "tests.replay.child"), ("timer_scheduled", 2, None)]
    assert run.events[-1].payload["fire_at"] == (NOW + timedelta(seconds=60)).isoformat()
    child_id = run.events[1].payload["run_id"]
    completed = {"run_id": child_id, "result": 5, "error": None}
    if first == "timer":
        run.add(Kind.TIMER_FIRED, 2, fire_at=run.events[-1].payload["fire_at"])
        assert run.step().outcome is None  # timed out: now waits for the child itself
        run.add(Kind.CHILD_COMPLETED, 1, "tests.replay.child", **completed)
        expected = Complete({"late": 5})
    else:
        run.add(Kind.CHILD_COMPLETED, 1, "tests.replay.child", **completed)
        expected = Complete(5)
    assert run.step().outcome == expected
    assert run.replay() == Decision([], expected)
