"""continuum-celery: durable, versioned workflows for Celery.

A workflow is a plain function of ``(ctx, input)``, replayed from its journal
in PostgreSQL; its activities run as Celery tasks.
"""

from __future__ import annotations

from typing import Any

from .client import RunHandle
from .context import WorkflowContext
from .definitions import RetryPolicy, activity, workflow
from .errors import (
    ActivityFailed,
    ChildCancelled,
    ChildFailed,
    ConfigurationError,
    ContinuumError,
    InvalidArgument,
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
    WorkflowFailed,
)
from .installer import Continuum

__all__ = [
    # defining workflows
    "workflow",
    "activity",
    "RetryPolicy",
    "WorkflowContext",
    # running them
    "Continuum",
    "RunHandle",
    "get_run",
    "app",
    # errors raised inside workflows
    "ActivityFailed",
    "SignalTimeout",
    "ChildFailed",
    "ChildCancelled",
    "RunCancelled",
    # errors raised to callers and operators
    "ContinuumError",
    "ConfigurationError",
    "SchemaNotMigrated",
    "InvalidArgument",
    "PayloadError",
    "UnknownWorkflow",
    "UnknownVersion",
    "RunNotFound",
    "RunConflict",
    "RunFinished",
    "LeaseLost",
    "NondeterminismError",
    "WorkflowFailed",
]


def get_run(run_id: str) -> RunHandle:
    """A handle on an existing run of the current engine. Raises RunNotFound."""
    from .installer import current

    return current().client.get(run_id)


def __getattr__(name: str) -> Any:
    # ``celery -A continuum_celery`` looks up ``app``; build it only then, not on every import.
    if name == "app":
        from .app import get_default_app

        return get_default_app()
    raise AttributeError(f"module 'continuum_celery' has no attribute {name!r}")
