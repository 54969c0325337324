"""Named telemetry events with a small hook API, and loggers that carry run context.

The engine calls :func:`emit` at each interesting transition. Anything may listen:
the Prometheus exporter in :mod:`continuum_celery.metrics`, a test, or user code::

    from continuum_celery import telemetry

    @telemetry.connect("run_failed")
    def page_someone(event: telemetry.TelemetryEvent) -> None:
        alert(f"{event.workflow} run {event.run_id} failed: {event.fields.get('error')}")

Handlers run synchronously in the emitting thread, so they must be quick. A handler
that raises is logged on the ``continuum_celery.telemetry`` logger and skipped; it
never breaks the engine or the other handlers. Every event is also logged at DEBUG
on that logger, with ``run_id``, ``workflow`` and ``event`` on the log record.

Events and their conventional fields (beyond ``run_id`` and ``workflow``):

==========================  ==========================================================
``run_started``             a run was created (a child run: ``parent_run_id``; a
                            continuation: ``continued_from``)
``run_completed``           the run returned a result
``run_failed``              the run ended failed (``error``)
``run_cancelled``           the run ended cancelled
``run_continued``           the run continued as new (``next_run_id``)
``activity_scheduled``      ``activity``, ``attempt``
``activity_started``        ``activity``, ``attempt``
``activity_completed``      ``activity``, ``attempt``, ``duration`` (seconds)
``activity_failed``         ``activity``, ``attempt``, ``duration`` (seconds), ``error``
                            (on the last attempt; earlier ones emit ``activity_retried``)
``activity_retried``        ``activity``, ``attempt``, ``retry_in`` (seconds)
``timer_fired``             ``lateness``: seconds between the due time and the firing
``signal_received``         ``signal``: the signal's name (when the run takes it from its inbox)
``lease_lost``              ``token``: the stale fencing token the writer held
``unknown_version``         ``version_hash`` that this worker has not loaded
``nondeterminism``          ``seq``: the history sequence number that did not match
``replay_step``             ``duration`` (seconds), ``events``: history length replayed,
                            ``advance`` (seconds in the replay engine alone), ``loaded``
                            (events read for the step), ``snapshot_seq``, ``cache_hit``
``sweep``                   ``duration`` (seconds), ``due_backlog``, ``dispatched``
==========================  ==========================================================

Fields are conventions, not a schema: a listener should use ``fields.get(...)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, overload

from continuum_celery.errors import InvalidArgument

EVENTS: frozenset[str] = frozenset(
    {
        "run_started",
        "run_completed",
        "run_failed",
        "run_cancelled",
        "run_continued",
        "activity_scheduled",
        "activity_started",
        "activity_completed",
        "activity_failed",
        "activity_retried",
        "timer_fired",
        "signal_received",
        "lease_lost",
        "unknown_version",
        "nondeterminism",
        "replay_step",
        "sweep",
    }
)
"""Every event name :func:`emit` accepts."""

LOGGER_NAME = "continuum_celery.telemetry"

_log = logging.getLogger(LOGGER_NAME)


@dataclass(frozen=True)
class TelemetryEvent:
    """One emitted event, as handed to each handler.

    Attributes:
        name: one of :data:`EVENTS`.
        run_id: the run concerned, if any (``sweep`` has none).
        workflow: the workflow's logical name, if known.
        fields: the event's other keyword arguments (read-only).
        at: wall-clock time of the emit, seconds since the epoch.
    """

    name: str
    run_id: str | None
    workflow: str | None
    fields: Mapping[str, Any]
    at: float


Handler = Callable[[TelemetryEvent], None]

# Readers take the current tuple without a lock; writers replace it under the lock,
# so an emit racing an unsubscribe sees either the old or the new tuple, never a mix.
_handlers: dict[str, tuple[Handler, ...]] = {name: () for name in EVENTS}
_write_lock = threading.Lock()


def _unknown(names: Iterable[str]) -> InvalidArgument:
    bad = sorted(names)
    return InvalidArgument(
        f"unknown telemetry event(s) {', '.join(map(repr, bad))}; valid names are: {', '.join(sorted(EVENTS))}",
        unknown=bad,
        valid=sorted(EVENTS),
    )


def emit(name: str, *, run_id: str | None = None, workflow: str | None = None, **fields: Any) -> None:
    """Announce an event to its handlers and to the DEBUG log.

    Cheap when nobody listens: one dict lookup and a logging level check.

    Args:
        name: one of :data:`EVENTS`.
        run_id: the run concerned, if any.
        workflow: the workflow's logical name, if known.
        **fields: the event's conventional fields (see the module docstring).

    Raises:
        InvalidArgument: ``name`` is not a known event (a programming error).
    """
    handlers = _handlers.get(name)
    if handlers is None:
        raise _unknown([name])
    if _log.isEnabledFor(logging.DEBUG):
        detail = " ".join(f"{key}={value!r}" for key, value in fields.items())
        run_logger(LOGGER_NAME, run_id, workflow).debug("%s %s", name, detail, extra={"event": name})
    if not handlers:
        return
    event = TelemetryEvent(name, run_id, workflow, MappingProxyType(fields), time.time())
    for handler in handlers:
        try:
            handler(event)
        except Exception:
            _log.exception("telemetry handler %r failed on %s", handler, name)


def _resolve(events: Iterable[str] | None) -> tuple[str, ...]:
    if events is None:
        return tuple(sorted(EVENTS))
    names = (events,) if isinstance(events, str) else tuple(events)
    unknown = set(names) - EVENTS
    if unknown:
        raise _unknown(unknown)
    return tuple(dict.fromkeys(names))


def subscribe(handler: Handler, events: Iterable[str] | None = None) -> Callable[[], None]:
    """Call ``handler(event)`` on every emit of the given events.

    Args:
        handler: a callable taking a :class:`TelemetryEvent`.
        events: event names to listen to; ``None`` listens to all of them.

    Returns:
        A function that removes this subscription. Calling it twice is harmless.

    Raises:
        InvalidArgument: an event name is unknown; the message lists the valid ones.
    """
    names = _resolve(events)
    with _write_lock:
        for name in names:
            _handlers[name] = (*_handlers[name], handler)

    done = False

    def unsubscribe() -> None:
        nonlocal done
        with _write_lock:
            if done:
                return
            done = True
            for name in names:
                current = list(_handlers[name])
                if handler in current:  # disconnect() may have removed it already
                    current.remove(handler)
                    _handlers[name] = tuple(current)

    return unsubscribe


def disconnect(handler: Handler) -> None:
    """Remove every subscription of ``handler`` (for example one made with :func:`connect`)."""
    with _write_lock:
        for name, current in list(_handlers.items()):
            if handler in current:
                _handlers[name] = tuple(h for h in current if h != handler)


@overload
def connect(handler: Handler, /) -> Handler: ...
@overload
def connect(*events: str) -> Callable[[Handler], Handler]: ...
def connect(*events: Any) -> Any:
    """Decorator form of :func:`subscribe`; returns the function unchanged.

    ``@connect("run_completed", "run_failed")`` listens to those events;
    ``@connect`` or ``@connect()`` listens to all. Undo with :func:`disconnect`.

    Raises:
        InvalidArgument: an event name is unknown (raised when decorating).
    """
    if len(events) == 1 and callable(events[0]):
        subscribe(events[0])
        return events[0]
    names = _resolve(events or None)

    def decorator(handler: Handler) -> Handler:
        subscribe(handler, names)
        return handler

    return decorator


class RunLoggerAdapter(logging.LoggerAdapter[logging.Logger]):
    """Prefixes messages with ``[workflow run_id]`` and sets ``run_id``/``workflow`` on records."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        """Merge the run context into ``extra`` and prefix the message."""
        context = self.extra or {}
        kwargs["extra"] = {**kwargs.get("extra", {}), **context}
        workflow, run_id = context.get("workflow"), context.get("run_id")
        if workflow is None and run_id is None:
            return msg, kwargs
        return f"[{workflow or '-'} {run_id or '-'}] {msg}", kwargs


def run_logger(name: str, run_id: str | None, workflow: str | None) -> RunLoggerAdapter:
    """Return a logger whose records carry the run's context.

    Every record gets the attributes ``run_id`` and ``workflow`` (``None`` when
    unknown), usable in a formatter as ``%(run_id)s``, and its message starts with
    ``[workflow run_id]`` so plain formats show it too (``-`` stands for a missing
    part; with neither, there is no prefix).

    Args:
        name: the underlying logger's name, e.g. ``__name__``.
        run_id: the run concerned, if any.
        workflow: the workflow's logical name, if known.
    """
    return RunLoggerAdapter(logging.getLogger(name), {"run_id": run_id, "workflow": workflow})


__all__ = [
    "EVENTS",
    "RunLoggerAdapter",
    "TelemetryEvent",
    "connect",
    "disconnect",
    "emit",
    "run_logger",
    "subscribe",
]
