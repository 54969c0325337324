"""continuum-celery: durable, versioned workflows for Celery.

A workflow is a plain function of ``(ctx, input)``, replayed from its journal
in PostgreSQL; its activities run as Celery tasks.
"""

from __future__ import annotations

from typing import Any

from . import runtime
from .activities import ActivityDefinition, BoundActivity, RetryPolicy, activity, activity_options
from .activity_context import ActivityInfo, activity_info, heartbeat
from .context import RunInfo, WorkflowContext
from .durable import durable
from .errors import (
    ActivityCancelled,
    ActivityFailed,
    ChildCancelled,
    ChildFailed,
    ChildTimeout,
    ConfigurationError,
    ContinuumError,
    DefinitionError,
    InvalidArgument,
    JournalError,
    JournalUnavailable,
    LeaseLost,
    NondeterminismError,
    PayloadError,
    RunCancelled,
    RunConflict,
    RunFinished,
    RunNotFound,
    SchemaNotMigrated,
    SignalTimeout,
    UnknownVersion,
    UnknownWorkflow,
    WorkflowError,
    WorkflowFailed,
    WorkflowTimeout,
)
from .futures import ActivityFuture, ChildHandle
from .installer import Continuum
from .replay import ContinueAsNewRequest
from .runtime import RunHandle
from .workflows import WorkflowDefinition, workflow

__all__ = [
    # defining workflows
    "workflow",
    "activity",
    "RetryPolicy",
    "ActivityDefinition",
    "WorkflowDefinition",
    "activity_options",
    "BoundActivity",
    "WorkflowContext",
    "RunInfo",
    "ActivityFuture",
    "ChildHandle",
    "ContinueAsNewRequest",
    # inside an activity
    "activity_info",
    "heartbeat",
    "ActivityInfo",
    "ActivityCancelled",
    # running them
    "Continuum",
    "RunHandle",
    "get_run",
    "durable",
    "app",
    # errors raised inside workflows
    "WorkflowError",
    "ActivityFailed",
    "SignalTimeout",
    "ChildFailed",
    "ChildCancelled",
    "ChildTimeout",
    "RunCancelled",
    "WorkflowTimeout",
    # errors raised to callers and operators
    "ContinuumError",
    "ConfigurationError",
    "SchemaNotMigrated",
    "DefinitionError",
    "InvalidArgument",
    "PayloadError",
    "UnknownWorkflow",
    "UnknownVersion",
    "RunNotFound",
    "RunConflict",
    "RunFinished",
    "JournalError",
    "JournalUnavailable",
    "LeaseLost",
    "NondeterminismError",
    "WorkflowFailed",
]


def get_run(run_id: str) -> RunHandle:
    """A handle on an existing run of the current engine. Raises RunNotFound."""
    return runtime.current().get_run(run_id)


def _install_default_app() -> None:
    # With no engine installed, the API uses the bundled app's (configured from the environment).
    from .app import get_default_app

    get_default_app()


runtime.set_default(_install_default_app)


def __getattr__(name: str) -> Any:
    # ``celery -A continuum_celery`` looks up ``app``; build it only then, not on every import.
    if name == "app":
        from .app import get_default_app

        return get_default_app()
    raise AttributeError(f"module 'continuum_celery' has no attribute {name!r}")
