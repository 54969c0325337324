"""``@activity`` and :class:`RetryPolicy`: a side-effecting step, run as a Celery task and retried durably.

The decorator works bare (``@activity``) and with options
(``@activity(retry=RetryPolicy(...), queue="payments")``); an activity is any
function whose arguments and result are JSON.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

from .errors import ContinuumError, DefinitionError, InvalidArgument

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, kw_only=True)
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


class CeleryTask(Protocol):
    """A Celery task used as an activity, unchanged (``@app.task``): what continuum reads of it."""

    name: str

    def run(self, *args: Any, **kwargs: Any) -> Any: ...

    def apply_async(self, *args: Any, **kwargs: Any) -> Any: ...


class ActivityDefinition(Generic[P, R]):
    """A function registered as an activity; calling it still runs the plain function."""

    def __init__(
        self,
        fn: Callable[P, R],
        name: str,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        queue: str | None = None,
        timeout: float | None = None,
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

    def options(
        self,
        *,
        queue: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        idempotency_key: str | None = None,
    ) -> BoundActivity[P, R]:
        """This activity with options for one call: ``ctx.run(charge.options(queue="eu"), order_id, cents)``.

        Each option left None keeps the definition's own. See :func:`activity_options`.
        """
        return activity_options(self, queue=queue, retry=retry, timeout=timeout, idempotency_key=idempotency_key)

    @overload
    def compensate(self, fn: F, /) -> F: ...
    @overload
    def compensate(self, fn: None = None, /, *, retry: RetryPolicy | None = None) -> Callable[[F], F]: ...

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


@dataclass(frozen=True)
class CallOptions:
    """Options of one activity call, apart from its arguments; None keeps the activity's own."""

    queue: str | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = None
    idempotency_key: str | None = None

    def then(self, later: CallOptions) -> CallOptions:
        """These options with those ``later`` sets on top (what it leaves None stays)."""
        return CallOptions(
            queue=later.queue or self.queue,
            retry=later.retry or self.retry,
            timeout=later.timeout or self.timeout,
            idempotency_key=later.idempotency_key or self.idempotency_key,
        )


class BoundActivity(Generic[P, R]):
    """An activity with options bound for a call (``act.options(...)``); ``ctx.run`` takes it as the activity.

    Typed as the activity it binds: ``ctx.run(charge.options(queue="eu"), ...)`` checks the
    arguments against ``charge`` and returns what ``charge`` returns.
    """

    def __init__(self, activity: ActivityDefinition[P, R] | Any, options: CallOptions) -> None:
        #: The ``@activity`` definition, or the Celery task used as an activity.
        self.activity = activity
        self.call_options = options

    def options(
        self,
        *,
        queue: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        idempotency_key: str | None = None,
    ) -> BoundActivity[P, R]:
        """A copy with more options bound on top of these (as Celery's ``signature.set``)."""
        return activity_options(self, queue=queue, retry=retry, timeout=timeout, idempotency_key=idempotency_key)

    def __repr__(self) -> str:
        return f"<{self.activity!r} with {self.call_options}>"


@overload
def activity_options(
    act: ActivityDefinition[P, R] | BoundActivity[P, R],
    /,
    *,
    queue: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | timedelta | None = None,
    idempotency_key: str | None = None,
) -> BoundActivity[P, R]: ...
@overload
def activity_options(
    act: Any,
    /,
    *,
    queue: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | timedelta | None = None,
    idempotency_key: str | None = None,
) -> BoundActivity[..., Any]: ...


def activity_options(
    act: Any,
    /,
    *,
    queue: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | timedelta | None = None,
    idempotency_key: str | None = None,
) -> BoundActivity[..., Any]:
    """An activity (an ``@activity``, or a Celery task used as one) with options for one call.

    ``ctx.run`` and ``ctx.start_activity`` take the result in place of the activity, and
    give every keyword argument of theirs to the activity itself::

        ctx.run(activity_options(ship, queue="eu"), order_id)   # a plain @app.task
        ctx.run(charge.options(idempotency_key=key), order_id)  # the same, for an @activity

    Args:
        queue: Celery queue of this call's attempts (default: the activity's, else the engine's).
        retry: retry policy of this call (default: the activity's).
        timeout: start-to-close seconds per attempt (default: the activity's, else the engine's).
        idempotency_key: a key shared by calls that must run once between them, across runs:
            the first result recorded under it is the result of every later call with it.

    Raises:
        InvalidArgument: ``timeout`` is not a positive number of seconds, or ``idempotency_key``
            is not a non-empty str of at most 200 characters.
    """
    target, earlier = (act.activity, act.call_options) if isinstance(act, BoundActivity) else (act, CallOptions())
    name, _, _ = activity_ref(target)
    # As given: an int stays an int in the journaled payload, as it always was.
    seconds = positive_seconds(timeout, f"{name}.options(timeout={timeout!r})", InvalidArgument)
    if idempotency_key is not None and not (isinstance(idempotency_key, str) and 0 < len(idempotency_key) <= 200):
        raise InvalidArgument(
            f"idempotency_key for {name} must be a non-empty str of at most 200 characters, "
            f"got {idempotency_key!r}."
        )
    return BoundActivity(target, earlier.then(CallOptions(queue, retry, seconds, idempotency_key)))


def activity_ref(act: Any) -> tuple[str, ActivityDefinition[Any, Any] | None, Any]:
    """Name an activity: an ``@activity``, or a plain Celery task used unchanged.

    Returns (name, definition or None, the Celery task or None); a Celery task registered
    under the name of an ``@activity`` takes that definition's options.

    Raises:
        InvalidArgument: ``act`` is neither.
    """
    if isinstance(act, ActivityDefinition):
        return act.name, act, None
    if hasattr(act, "name") and hasattr(act, "run") and callable(getattr(act, "apply_async", None)):
        return str(act.name), get_activity(str(act.name)), act
    raise InvalidArgument(
        f"{act!r} is not an activity: decorate it with @activity (or pass a Celery @app.task).",
        value=repr(act),
    )


_activities: dict[str, ActivityDefinition[Any, Any]] = {}
_activities_lock = threading.Lock()


def qualified_name(fn: Callable[..., Any]) -> str:
    """The default name of a definition: ``module.qualname`` of its function."""
    return f"{fn.__module__}.{fn.__qualname__}"


def _register_activity(defn: ActivityDefinition[Any, Any]) -> None:
    with _activities_lock:
        existing = _activities.get(defn.name)
        if existing is not None and qualified_name(existing.fn) != qualified_name(defn.fn):
            raise DefinitionError(
                f"activity name {defn.name!r} is already used by {qualified_name(existing.fn)}; "
                f"give {qualified_name(defn.fn)} another name with @activity(name=...)."
            )
        _activities[defn.name] = defn


def get_activity(name: str) -> ActivityDefinition[Any, Any] | None:
    """The activity registered under ``name`` in this process, if any."""
    return _activities.get(name)


def positive_seconds(
    value: float | timedelta | None, call: str, error: type[ContinuumError] = DefinitionError
) -> float | None:
    """``value``, a number of seconds (as given) or a timedelta (in seconds); None stays None.

    Raises:
        error: ``value`` is not a positive number of seconds; the message names ``call``.
    """
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0):
        raise error(f"{call}: use a positive number of seconds.")
    return seconds


def _limit(option: str, value: float | timedelta | None) -> float | None:
    """An ``@activity`` time limit in float seconds, as definitions store them."""
    seconds = positive_seconds(value, f"@activity({option}={value!r})")
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
        defn = ActivityDefinition(
            f,
            name or qualified_name(f),
            retry=retry or DEFAULT_RETRY,
            queue=queue,
            timeout=_limit("timeout", timeout),
            heartbeat_timeout=_limit("heartbeat_timeout", heartbeat_timeout),
            schedule_to_close=_limit("schedule_to_close", schedule_to_close),
        )
        _register_activity(defn)
        return defn

    return decorate(fn) if fn is not None else decorate
