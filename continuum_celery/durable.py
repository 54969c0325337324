"""``durable(sig)``: run an existing Celery canvas as one journaled workflow.

The canvas is turned into a plan (plain JSON, checked before anything is written)
and run by the built-in ``continuum.canvas`` workflow. What maps:

* a task signature (``t.s(...)``, ``t.si(...)``, ``.set(queue=...)``): an activity running
  the plain Celery task unchanged, with the chosen retry policy and an idempotency key
  (the run and the task's place in the canvas), so its result is journaled once;
* ``chain``: steps in order, each given the previous step's result as first argument
  (not an immutable one), as in Celery;
* ``group``: its members at once, each given the incoming result; their results in order.
  A member that is itself a chain, group or chord runs as a child run of its own;
* ``chord``: its header as a group, then the body once with the list of the header's results;
* a workflow signature (``wf.s(...)``): a child run of that workflow.

A failing task (after its retries) fails the run as a failing task stops a chain:
what follows never runs, and a chord's body never runs either.

Refused, with an error naming the signature: other signature options (``countdown``, ``eta``,
``expires``, ``link``, ``link_error``, ``task_id``, ``priority``, ...: the journal decides
when a step runs and what follows it), ``chunks`` / ``map`` / ``starmap``, empty chains or
groups, and arguments that are not JSON.
"""

from __future__ import annotations

import importlib
from typing import Any

from celery.canvas import Signature

from .activities import DEFAULT_RETRY, RetryPolicy, activity_options, positive_seconds
from .dispatch import CANVAS_WORKFLOW, START_TASK
from .errors import InvalidArgument
from .serialization import check_json, roundtrip
from .workflows import get_workflow, workflow

#: Signature options a durable canvas keeps; every other one is refused.
KEPT_OPTIONS = frozenset({"queue"})
#: What ``wf.s()`` sets itself: how monitors show the start.
WORKFLOW_OPTIONS = KEPT_OPTIONS | {"argsrepr", "kwargsrepr", "shadow"}


def durable(
    sig: Signature,
    *,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    run_id: str | None = None,
) -> Any:
    """Run the canvas ``sig`` (a task, ``chain``, ``group`` or ``chord``, nested) as a journaled workflow.

    Args:
        retry: the retry policy of every task (default: 3 attempts, 1 s doubling).
        timeout: start-to-close seconds of each task attempt (default: the engine's ``activity_timeout``).
        run_id: the run's id (idempotent on it, as ``wf.start``); default a UUID.

    Returns:
        The run's :class:`~continuum_celery.client.RunHandle`; its result is the canvas's.

    Raises:
        InvalidArgument: a signature uses something a durable canvas does not map (see the module doc).
        PayloadError: an argument is not JSON.
    """
    positive_seconds(timeout, f"durable(timeout={timeout!r})", InvalidArgument)
    spec = {"plan": plan_of(sig), "retry": (retry or DEFAULT_RETRY).to_json(), "timeout": timeout}
    return canvas_flow.start(spec, run_id=run_id)


def plan_of(sig: Any) -> dict[str, Any]:
    """The JSON plan of a canvas. Raises InvalidArgument / PayloadError (see :func:`durable`)."""
    if not isinstance(sig, Signature):
        raise InvalidArgument(f"durable() needs a Celery signature, chain, group or chord, got {sig!r}.")
    kind = sig.subtask_type
    if kind in ("chain", "group", "chord"):
        _refuse_options(sig, set())
        members = list(sig.tasks)
        if not members:
            raise InvalidArgument(f"durable(): the {kind} {sig!r} is empty; give it at least one signature.")
        plans = [plan_of(member) for member in members]
        if kind == "chord":
            return {"kind": "chord", "header": plans, "body": plan_of(sig.body)}
        if kind == "chain":  # a chain in a chain is one sequence, as in Celery
            plans = [step for p in plans for step in (p["steps"] if p["kind"] == "chain" else [p])]
            return {"kind": "chain", "steps": plans}
        return {"kind": "group", "items": plans}
    if kind is not None or str(sig.task).startswith("celery."):  # chunks, map, starmap are celery.* tasks
        raise InvalidArgument(
            f"durable(): {sig.task} signatures ({sig!r}) are not supported; write the loop as a group of signatures."
        )
    return _task_plan(sig)


def _task_plan(sig: Signature) -> dict[str, Any]:
    args, kwargs = list(sig.args), dict(sig.kwargs)
    check_json(args, f"arguments of {sig.task} in durable()")
    check_json(kwargs, f"keyword arguments of {sig.task} in durable()")
    if sig.task == START_TASK:  # a workflow signature (wf.s()): a child run
        _refuse_options(sig, WORKFLOW_OPTIONS)
        return {
            "kind": "workflow",
            "workflow": kwargs["workflow"],
            "run_id": kwargs.get("run_id"),
            "args": roundtrip(args),
            "immutable": bool(sig.immutable),
        }
    _refuse_options(sig, KEPT_OPTIONS)
    return {
        "kind": "task",
        "name": sig.task,
        "args": roundtrip(args),
        "kwargs": roundtrip(kwargs),
        "immutable": bool(sig.immutable),
        "queue": sig.options.get("queue"),
    }


def _refuse_options(sig: Signature, kept: frozenset[str] | set[str]) -> None:
    refused = sorted(name for name, value in sig.options.items() if name not in kept and value is not None)
    if refused:
        raise InvalidArgument(
            f"durable(): {sig!r} sets {refused}; a durable canvas keeps only {sorted(kept) or 'no options'} "
            "(the journal decides when each step runs and what follows it). Remove them."
        )


@workflow(workflow=CANVAS_WORKFLOW)
def canvas_flow(ctx: Any, spec: dict[str, Any]) -> Any:
    """Run a durable canvas plan (or one branch of it, as a child run); return its result."""
    runner = _Runner(ctx, spec)
    return runner.run(spec["plan"], spec.get("prev", []), "0")


class _Runner:
    """Walks a plan inside a workflow body: tasks become activities, nested branches child runs."""

    def __init__(self, ctx: Any, spec: dict[str, Any]) -> None:
        self.ctx = ctx
        self.spec = spec
        self.key = spec.get("key") or ctx.run_id  # child runs keep their root's keys
        self.retry = _policy(spec["retry"])

    def run(self, node: dict[str, Any], prev: list[Any], path: str) -> Any:
        """The result of ``node``; ``prev`` is ``[incoming result]`` or ``[]`` (none)."""
        kind = node["kind"]
        if kind == "chain":
            for i, step in enumerate(node["steps"]):
                prev = [self.run(step, prev, f"{path}.{i}")]
            return prev[0]
        if kind in ("group", "chord"):
            members = node["items"] if kind == "group" else node["header"]
            results = self.ctx.gather([self.start(m, prev, f"{path}.{i}") for i, m in enumerate(members)])
            return results if kind == "group" else self.run(node["body"], [results], f"{path}.body")
        return self.start(node, prev, path).result()

    def start(self, node: dict[str, Any], prev: list[Any], path: str) -> Any:
        """A future of ``node``: an activity for a task, a child run for anything else."""
        args = node.get("args", [])
        if node["kind"] in ("task", "workflow") and prev and not node["immutable"]:
            args = [prev[0], *args]
        if node["kind"] == "workflow":
            child = get_workflow(node["workflow"])
            return self.ctx.start_child(child, args[0] if args else None, run_id=node["run_id"])
        if node["kind"] != "task":
            branch = {**self.spec, "plan": node, "prev": prev, "key": f"{self.key}:{path}"}
            return self.ctx.start_child(canvas_flow, branch)
        task = activity_options(
            _celery_task(node["name"]),
            idempotency_key=f"{self.key}:{path}",
            retry=self.retry,
            queue=node["queue"],
            timeout=self.spec.get("timeout"),
        )
        return self.ctx.start_activity(task, *args, **node["kwargs"])


def _celery_task(name: str) -> Any:
    from .installer import current

    task = current().app.tasks.get(name)
    if task is None:
        raise InvalidArgument(
            f"task {name!r} of a durable canvas is not registered in this worker's Celery app; "
            "import its module in the worker (the app's `imports` or `include`)."
        )
    return task


def _policy(stored: dict[str, Any]) -> RetryPolicy:
    """The RetryPolicy stored in a plan (its non-retryable types imported back by name)."""
    types = []
    for ref in stored.get("non_retryable", []):
        module, _, qualname = ref.partition(":")
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
        types.append(found)
    return RetryPolicy(
        max_attempts=stored["max_attempts"],
        initial_interval=stored["initial_interval"],
        backoff=stored["backoff"],
        max_interval=stored["max_interval"],
        non_retryable=tuple(types),
    )
