"""Optional OpenTelemetry spans that join a run's work into one trace.

A run executes as many Celery tasks on many workers, possibly across retries and
restarts. To see it as one trace, the engine stores a W3C trace-context carrier
(``{"traceparent": ...}``) on the run when it starts (:func:`new_trace_context`)
and opens every later span as a child of it (:func:`span` with ``trace_context``).

Off unless :func:`enable_tracing` is called; OpenTelemetry is imported only then
(``pip install continuum-celery[tracing]``). While off, :func:`span` returns a
shared no-op context manager and :func:`new_trace_context` returns ``{}``.

Span names used by the engine: ``continuum.start``, ``continuum.replay``,
``continuum.activity``; and ``continuum.run``, the zero-length root recorded by
:func:`new_trace_context` when it is called outside any span.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from continuum_celery.errors import ConfigurationError

TRACER_NAME = "continuum_celery"
ROOT_SPAN_NAME = "continuum.run"

# (tracer, W3C propagator) while enabled. One tuple so readers never see half a state.
_state: tuple[Any, Any] | None = None
_NOOP: AbstractContextManager[Any] = nullcontext()


def enable_tracing(tracer_provider: Any | None = None) -> None:
    """Start recording spans.

    Args:
        tracer_provider: an OpenTelemetry ``TracerProvider``; by default the global one
            (``opentelemetry.trace.get_tracer_provider()``), which records nothing until
            the application configures it.

    Raises:
        ConfigurationError: OpenTelemetry is not installed.
    """
    global _state
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        raise ConfigurationError(
            "tracing needs OpenTelemetry: run `pip install continuum-celery[tracing]`",
            missing="opentelemetry-api",
        ) from exc
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    # The W3C propagator rather than the global one: the stored carrier must read back
    # the same on every worker, whatever propagators each process configures.
    _state = (provider.get_tracer(TRACER_NAME), TraceContextTextMapPropagator())


def disable_tracing() -> None:
    """Stop recording spans; :func:`span` becomes a no-op again."""
    global _state
    _state = None


def tracing_enabled() -> bool:
    """Whether :func:`enable_tracing` is in effect."""
    return _state is not None


def span(
    name: str,
    *,
    trace_context: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Any]:
    """Open a span, as the current span, for the duration of a ``with`` block.

    Args:
        name: the span name, e.g. ``"continuum.replay"``.
        trace_context: a carrier from :func:`new_trace_context`; the span becomes a
            child of the span it names, so a run's spans share one trace. Without it
            (or when empty) the span is a child of the current span, if any.
        attributes: span attributes; ``None`` values are left out.

    Returns:
        A context manager yielding the OpenTelemetry span, or ``None`` while tracing
        is off. An exception leaving the block is recorded on the span.
    """
    state = _state
    if state is None:
        return _NOOP
    tracer, propagator = state
    parent = propagator.extract(dict(trace_context)) if trace_context else None
    attrs = {k: v for k, v in attributes.items() if v is not None} if attributes else None
    cm: AbstractContextManager[Any] = tracer.start_as_current_span(name, context=parent, attributes=attrs)
    return cm


def new_trace_context() -> dict[str, str]:
    """Return the trace-context carrier to store on a run when it starts.

    Inside a span, the carrier names that span, so the run joins the caller's trace.
    Outside any span, a zero-length root span ``continuum.run`` is recorded and named
    instead, so the run gets a trace of its own (subject to the provider's sampler).

    Returns:
        ``{"traceparent": ..., ...}``, or ``{}`` while tracing is off or the provider
        records nothing.
    """
    state = _state
    if state is None:
        return {}
    from opentelemetry import trace

    tracer, propagator = state
    context = None  # the current context, which holds the current span
    if not trace.get_current_span().get_span_context().is_valid:
        root = tracer.start_span(ROOT_SPAN_NAME)
        root.end()
        context = trace.set_span_in_context(root)
    carrier: dict[str, str] = {}
    propagator.inject(carrier, context=context)
    return carrier


__all__ = ["disable_tracing", "enable_tracing", "new_trace_context", "span", "tracing_enabled"]
