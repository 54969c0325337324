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
from typing import Any, Generic, ParamSpec, TypeVar, overload

from .errors import DefinitionError

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


def positive_seconds(option: str, value: float | timedelta | None, decorator: str = "@activity") -> float | None:
    """``value`` (seconds or a timedelta) as float seconds; None stays None.

    Raises:
        DefinitionError: not a positive number of seconds (named as ``decorator(option=value)``).
    """
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
        seconds = positive_seconds("timeout", timeout)
        beat = positive_seconds("heartbeat_timeout", heartbeat_timeout)
        close = positive_seconds("schedule_to_close", schedule_to_close)
        defn = ActivityDefinition(f, name or qualified_name(f), retry or DEFAULT_RETRY, queue, seconds, beat, close)
        _register_activity(defn)
        return defn

    return decorate(fn) if fn is not None else decorate
