"""The public names of ``continuum_celery``, pinned: adding or removing one is a decision, made here."""

from __future__ import annotations

import inspect

import continuum_celery
from continuum_celery import errors

PUBLIC = {
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
    # errors
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
    "WorkflowError",
    "ActivityFailed",
    "SignalTimeout",
    "ChildFailed",
    "ChildCancelled",
    "RunCancelled",
    "WorkflowTimeout",
    "ChildTimeout",
}


def test_all_is_the_pinned_set_without_duplicates() -> None:
    assert len(continuum_celery.__all__) == len(set(continuum_celery.__all__))
    assert set(continuum_celery.__all__) == PUBLIC


def test_every_name_but_the_lazy_app_is_importable_without_side_effects() -> None:
    for name in PUBLIC - {"app"}:  # ``app`` builds the bundled app on first access
        assert getattr(continuum_celery, name) is not None, name


def test_every_error_class_is_exported() -> None:
    classes = {n for n, obj in vars(errors).items() if inspect.isclass(obj) and issubclass(obj, Exception)}
    defined_here = {n for n in classes if getattr(errors, n).__module__ == errors.__name__}
    assert defined_here <= PUBLIC, f"export these errors: {sorted(defined_here - PUBLIC)}"
