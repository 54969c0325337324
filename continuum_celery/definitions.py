"""``@workflow`` and ``@activity``: turn plain functions into durable definitions.

Both decorators work bare (``@activity``) and with options
(``@activity(retry=RetryPolicy(...), queue="payments")``). A workflow is a
function of ``(ctx, input)``; an activity is any function whose arguments and
result are JSON.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from . import runtime
from .errors import DefinitionError, InvalidArgument, UnknownWorkflow
from .hashing import version_hash as compute_version_hash
from .runtime import RunHandle
from .versioning import check_compatible_with
from .versioning import registry as workflow_registry

if TYPE_CHECKING:
    from celery.canvas import Signature
    from celery.result import AsyncResult

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class RetryPolicy:
    """How an activity is retried: exponential backoff, bounded.

    Attributes:
        max_attempts: attempts in all, the first included (1 = never retry).
        initial_interval: seconds before the second attempt.
        backoff: factor applied to the interval after each retry.
        max_interval: cap on the interval, in seconds.
        non_retryable: exception types that fail the activity at once.
    """

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    non_retryable: tuple[type[BaseException], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise DefinitionError(f"RetryPolicy(max_attempts={self.max_attempts}): use 1 or more.")
        if self.initial_interval < 0 or self.backoff < 1 or self.max_interval < 0:
            raise DefinitionError("RetryPolicy needs initial_interval >= 0, backoff >= 1 and max_interval >= 0.")

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2 for the first retry)."""
        return min(self.initial_interval * self.backoff ** max(attempt - 2, 0), self.max_interval)

    def to_json(self) -> dict[str, Any]:
        """The policy as stored on an activity task row."""
        return {
            "max_attempts": self.max_attempts,
            "initial_interval": self.initial_interval,
            "backoff": self.backoff,
            "max_interval": self.max_interval,
            "non_retryable": [f"{t.__module__}:{t.__qualname__}" for t in self.non_retryable],
        }


DEFAULT_RETRY = RetryPolicy()


class ActivityDefinition(Generic[P, R]):
    """A function registered as an activity; calling it still runs the plain function."""

    def __init__(
        self,
        fn: Callable[P, R],
        name: str,
        retry: RetryPolicy,
        queue: str | None,
        timeout: float | None,
        heartbeat_timeout: float | None = None,
        schedule_to_close: float | None = None,
    ) -> None:
        self.fn = fn
        self.schedule_to_close = schedule_to_close
        self.name = name
        self.retry = retry
        self.queue = queue
        self.timeout = timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.compensation: Callable[..., Any] | None = None
        self.compensation_retry: RetryPolicy | None = None
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def compensate(self, fn: Callable[..., Any] | None = None, /, *, retry: RetryPolicy | None = None) -> Any:
        """Register the saga undo of this activity; it gets ``(result, *args, **kwargs)``.

        Works bare (``@charge.compensate``) or with options
        (``@charge.compensate(retry=RetryPolicy(max_attempts=10))``); the retry policy
        defaults to the activity's own.

        Raises:
            DefinitionError: the activity already has a compensation, or ``fn`` is not callable.
        """

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            if not callable(f) or inspect.iscoroutinefunction(f):
                raise DefinitionError(f"{self.name}.compensate needs a plain (non-async) function, got {f!r}.")
            if self.compensation is not None:
                raise DefinitionError(f"activity {self.name!r} already has a compensation.")
            self.compensation = f
            self.compensation_retry = retry
            return f

        return register(fn) if fn is not None else register

    def __repr__(self) -> str:
        return f"<activity {self.name}>"


_activities: dict[str, ActivityDefinition[Any, Any]] = {}
_activities_lock = threading.Lock()


def _qualified_name(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _register_activity(defn: ActivityDefinition[Any, Any]) -> None:
    with _activities_lock:
        existing = _activities.get(defn.name)
        if existing is not None and _qualified_name(existing.fn) != _qualified_name(defn.fn):
            raise DefinitionError(
                f"activity name {defn.name!r} is already used by {_qualified_name(existing.fn)}; "
                f"give {_qualified_name(defn.fn)} another name with @activity(name=...)."
            )
        _activities[defn.name] = defn


def get_activity(name: str) -> ActivityDefinition[Any, Any] | None:
    """The activity registered under ``name`` in this process, if any."""
    return _activities.get(name)


def _positive_seconds(option: str, value: float | timedelta | None, decorator: str = "@activity") -> float | None:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0):
        raise DefinitionError(f"{decorator}({option}={value!r}): use a positive number of seconds.")
    return float(seconds) if seconds is not None else None


@overload
def activity(fn: Callable[P, R], /) -> ActivityDefinition[P, R]: ...
@overload
def activity(
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    queue: str | None = None,
    timeout: float | timedelta | None = None,
    heartbeat_timeout: float | timedelta | None = None,
    schedule_to_close: float | timedelta | None = None,
) -> Callable[[Callable[P, R]], ActivityDefinition[P, R]]: ...


def activity(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    queue: str | None = None,
    timeout: float | timedelta | None = None,
    heartbeat_timeout: float | timedelta | None = None,
    schedule_to_close: float | timedelta | None = None,
) -> Any:
    """Declare an activity: a side-effecting step run as a Celery task, retried durably.

    Args:
        name: stable identity in the journal (default ``module.qualname``).
        retry: the retry policy (default 3 attempts, 1 s doubling).
        queue: Celery queue of its tasks (default the engine's queue).
        timeout: start-to-close seconds per attempt; a longer attempt counts as failed.
        heartbeat_timeout: most seconds an attempt may go without calling ``heartbeat()``;
            one that does fails (``ActivityTimeout``) and is retried by its policy.
        schedule_to_close: most seconds all attempts together may take, from the schedule;
            no retry starts past it, and the activity then fails with ``ActivityTimeout``.

    Raises:
        DefinitionError: the name is taken by another function, or the options are invalid.
    """

    def decorate(f: Callable[..., Any]) -> ActivityDefinition[Any, Any]:
        if not callable(f) or inspect.iscoroutinefunction(f):
            raise DefinitionError(f"@activity needs a plain (non-async) function, got {f!r}.")
        seconds = _positive_seconds("timeout", timeout)
        beat = _positive_seconds("heartbeat_timeout", heartbeat_timeout)
        close = _positive_seconds("schedule_to_close", schedule_to_close)
        defn = ActivityDefinition(f, name or _qualified_name(f), retry or DEFAULT_RETRY, queue, seconds, beat, close)
        _register_activity(defn)
        return defn

    return decorate(fn) if fn is not None else decorate


class WorkflowDefinition(Generic[R]):
    """A workflow function with its identity: logical name, version number, version hash."""

    def __init__(
        self,
        fn: Callable[[Any, Any], R],
        name: str,
        version: int,
        saga: bool,
        compatible_with: tuple[str, ...] = (),
        timeout: float | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.version = version
        self.saga = saga
        self.timeout = timeout
        self.version_hash = compute_version_hash(fn, version)
        self.compatible_with = compatible_with
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn

    def start(
        self, input: Any = None, *, run_id: str | None = None, timeout: float | timedelta | None = None
    ) -> RunHandle:
        """Start a run of this workflow (idempotent on ``run_id``) and return its handle.

        ``timeout`` is this run's execution timeout, in place of ``@workflow(timeout=...)``:
        past it the body gets ``WorkflowTimeout`` at its next wait. A start that finds the
        run already there leaves that run's own deadline as it was.

        Raises:
            PayloadError: ``input`` is not JSON. InvalidArgument: ``run_id`` is malformed, or
            ``timeout`` is not a positive number of seconds.
            RunConflict: ``run_id`` already names a run with another workflow or input.
        """
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0):
            raise InvalidArgument(f"{self.name}.start(timeout={timeout!r}): use a positive number of seconds.")
        return runtime.current().start_run(
            self, input, run_id=run_id, timeout=float(seconds) if seconds is not None else None
        )

    def delay(
        self, input: Any = None, *, run_id: str | None = None, timeout: float | timedelta | None = None
    ) -> RunHandle:
        """Alias of :meth:`start`, as with Celery tasks."""
        return self.start(input, run_id=run_id, timeout=timeout)

    def s(self, *args: Any, run_id: str | None = None) -> Signature:
        """A Celery signature that starts a run of this workflow, for chains, groups and chords.

        In canvas the run behaves like one long task: in a chain, the previous task's
        result becomes the input, and what follows (the next task, a chord's callback,
        ``link`` / ``link_error``) gets the run's result or error when the run ends.
        The run id is the start task's id (or, for an id that cannot be a run id, one derived
        from it) unless ``run_id`` is given.

        Raises:
            InvalidArgument: more than one input, or a malformed ``run_id``. PayloadError: the input is not JSON.
        """
        return runtime.current().start_signature(self.name, args, run_id=run_id)

    def si(self, *args: Any, run_id: str | None = None) -> Signature:
        """An immutable :meth:`s`: in a chain, the previous task's result is not the input."""
        return self.s(*args, run_id=run_id).set(immutable=True)

    def apply_async(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult:
        """Start a run through a Celery task, as ``Task.apply_async`` does; returns that task's result.

        ``args`` is ``(input,)`` and ``kwargs`` may hold ``run_id``; ``options`` are Celery's
        (``countdown``, ``eta``, ``link``, ``link_error``, ``task_id``, ``queue``, ...). The result's
        ``get()`` returns the run's result or raises :class:`~continuum_celery.errors.WorkflowFailed`.

        Raises:
            InvalidArgument: other ``kwargs``, more than one input, or a malformed ``run_id``.
        """
        extra = dict(kwargs or {})
        run_id = extra.pop("run_id", None)
        if extra:
            raise InvalidArgument(
                f"workflow {self.name} takes one input and no keyword arguments (got {sorted(extra)}): "
                "pass args=(input,), with several values packed in one dict."
            )
        return self.s(*(args or ()), run_id=run_id).apply_async(**options)

    def __call__(self, ctx: Any, input: Any = None) -> R:
        return self.fn(ctx, input)

    def __repr__(self) -> str:
        return f"<workflow {self.name} v{self.version} {self.version_hash}>"


def _check_workflow_signature(fn: Callable[..., Any]) -> None:
    if not callable(fn) or inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn):
        raise DefinitionError(f"@workflow needs a plain function of (ctx, input), got {fn!r}.")
    params = [
        p for p in inspect.signature(fn).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required_extra = [
        p for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY and p.default is p.empty
    ]
    if len(params) != 2 or required_extra:
        raise DefinitionError(
            f"workflow {_qualified_name(fn)} must be a function of (ctx, input); it takes "
            f"({', '.join(inspect.signature(fn).parameters)}). Pack several arguments into one "
            "dict input: def flow(ctx, order): ..."
        )


@overload
def workflow(fn: Callable[[Any, Any], R], /) -> WorkflowDefinition[R]: ...
@overload
def workflow(
    *,
    workflow: str | None = None,
    version: int = 1,
    saga: bool = False,
    compatible_with: Sequence[str] = (),
    timeout: float | timedelta | None = None,
) -> Callable[[Callable[[Any, Any], R]], WorkflowDefinition[R]]: ...


def workflow(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    workflow: str | None = None,
    version: int = 1,
    saga: bool = False,
    compatible_with: Sequence[str] = (),
    timeout: float | timedelta | None = None,
) -> Any:
    """Declare a durable workflow: a function of ``(ctx, input)`` replayed from its journal.

    Every run is pinned to the ``version_hash`` of the body it started on (the
    normalised source plus ``version``) and resumes only on a worker that has
    loaded that exact body: replay messages go to the version's own queue. Two
    ways to change a workflow:

    * Keep the old body next to the new one: ``version=1`` on the old function,
      ``version=2`` on the new, same ``workflow=`` name. New runs start on the
      highest version; old runs finish on version 1. Delete it once
      ``continuum versions`` shows no run pinned to it.
    * Edit the body in place, guarding each change with ``ctx.patched("id")``
      (old histories take the old branch). The edit changes the hash, so old runs
      would find no worker; declare the hashes the edited body can still replay
      with ``compatible_with=("<old hash>", ...)`` (the hash is shown by
      ``continuum versions`` and in every run row). Workers then serve those runs
      with the edited body. Verify the claim before deploying:
      ``continuum replay-check --database-url ...`` replays stored histories
      against the current code and reports every run it can no longer reproduce.

    Args:
        workflow: logical name (default ``module.qualname``). Two definitions with one
            logical name and different ``version`` numbers coexist: runs resume on the
            version they started on.
        version: version number, hashed with the body into ``version_hash``.
        saga: run the compensations of completed activities when the body raises.
        compatible_with: version hashes of earlier bodies whose runs this body can
            replay (an in-place edit guarded by ``ctx.patched``). An exact match wins:
            a loaded body with that very hash still serves its own runs.
        timeout: most seconds a run may take from its start (workflow execution timeout);
            then ``WorkflowTimeout`` is raised at the body's next blocking call and, unless
            the body handles it, the run fails (a saga compensates first). Not carried to
            child runs or across ``continue_as_new``.

    Raises:
        DefinitionError: not a function of (ctx, input), a clashing name/version, a
            malformed ``compatible_with``, or an old hash claimed by two bodies.
    """

    def decorate(f: Callable[..., Any]) -> WorkflowDefinition[Any]:
        _check_workflow_signature(f)
        if not isinstance(version, int) or version < 1:
            raise DefinitionError(f"@workflow(version={version!r}): use a positive integer.")
        name = workflow or _qualified_name(f)
        compatible = check_compatible_with(compatible_with, f"@workflow {name}")
        seconds = _positive_seconds("timeout", timeout, "@workflow")
        defn = WorkflowDefinition(f, name, version, saga, compatible, seconds)
        workflow_registry.register(defn)
        return defn

    return decorate(fn) if fn is not None else decorate


def get_workflow(name: str) -> WorkflowDefinition[Any]:
    """The current (highest-version) definition of a workflow name.

    Raises:
        UnknownWorkflow: no workflow of that name is loaded in this process.
    """
    defn = workflow_registry.current(name)
    if not isinstance(defn, WorkflowDefinition):
        raise UnknownWorkflow(f"{name!r} is not a workflow definition.", workflow=name)
    return defn
