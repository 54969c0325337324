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


def _signatures() -> list[tuple[str, inspect.Signature]]:
    """The signature of every public function, and of every public method and constructor of a public class."""
    found = []
    for name in sorted(PUBLIC - {"app"}):
        obj = getattr(continuum_celery, name)
        if inspect.isclass(obj):
            if issubclass(obj, Exception):
                continue
            members = [(f"{name}.{m}", f) for m, f in vars(obj).items() if not m.startswith("_") or m == "__init__"]
            found += [(where, inspect.signature(f)) for where, f in members if inspect.isfunction(f)]
            if "__init__" not in vars(obj) and "__dataclass_fields__" in vars(obj):
                found.append((name, inspect.signature(obj)))
        elif callable(obj):
            found.append((name, inspect.signature(obj)))
    return found


def test_optional_flags_and_ids_are_keyword_only() -> None:
    # The subject of a call (``get_run(run_id)``) is required; an optional id or flag is passed by name.
    positional = [
        f"{where}({p.name})"
        for where, sig in _signatures()
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.default is not p.empty
        and (isinstance(p.default, bool) or p.name == "id" or p.name.endswith("_id"))
    ]
    assert not positional, f"make these keyword-only: {positional}"


def test_every_error_class_is_exported() -> None:
    classes = {n for n, obj in vars(errors).items() if inspect.isclass(obj) and issubclass(obj, Exception)}
    defined_here = {n for n in classes if getattr(errors, n).__module__ == errors.__name__}
    assert defined_here <= PUBLIC, f"export these errors: {sorted(defined_here - PUBLIC)}"
