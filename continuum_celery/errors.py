"""The one error tree of continuum-celery.

::

    ContinuumError
    ├── ConfigurationError            settings or environment are wrong
    │   └── SchemaNotMigrated         the database lacks continuum's tables: run `continuum migrate`
    ├── InvalidArgument (ValueError)  bad input at a call site; nothing was written
    │   └── PayloadError (TypeError)  a value is not JSON-serialisable or is too large
    ├── DefinitionError               a @workflow / @activity cannot be defined as written
    ├── UnknownWorkflow               no workflow of that name is loaded
    ├── UnknownVersion                the run's version hash is not loaded in this worker
    ├── RunNotFound                   no run with that id
    ├── RunConflict                   a run id is already used with other arguments
    ├── RunFinished                   the run is terminal; it takes no signal or cancel
    ├── JournalError                  the journal database refused a statement
    │   ├── LeaseLost                 the caller's fencing token is stale; nothing was written
    │   └── JournalUnavailable        the journal database cannot be reached: refused, lost, timed out
    ├── NondeterminismError           the code no longer reproduces the run's history
    ├── WorkflowFailed                client side: the run ended failed / cancelled
    ├── ActivityCancelled             raised inside an activity by heartbeat(): stop, the attempt is over
    └── WorkflowError                 raised inside a workflow body
        ├── ActivityFailed            an activity exhausted its retries
        ├── SignalTimeout             wait_signal(timeout=...) elapsed
        ├── ChildFailed               a child run failed
        ├── ChildCancelled            a child run was cancelled
        ├── ChildTimeout              child.result(timeout=...) elapsed; the child goes on
        ├── RunCancelled              the run was asked to stop
        └── WorkflowTimeout           the run outlived @workflow(timeout=...)

Every error keeps its structured fields as attributes and pickles by keyword
arguments, so it survives a trip through Celery's result backend or a
``multiprocessing`` boundary.
"""

from __future__ import annotations

from typing import Any


class ContinuumError(Exception):
    """Root of every error raised by continuum-celery."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.fields))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[ContinuumError], message: str, fields: dict[str, Any]) -> ContinuumError:
    err = cls.__new__(cls)
    ContinuumError.__init__(err, message, **fields)
    return err


class ConfigurationError(ContinuumError):
    """Settings or the environment are wrong (a missing or unusable URL, a missing extra)."""


class SchemaNotMigrated(ConfigurationError):
    """The journal database lacks continuum's tables (or a column), or is behind the code's migrations.

    Run ``continuum migrate``. Raised by the check a journal makes when it opens, and by any
    statement that finds a table or column missing.
    """


class InvalidArgument(ContinuumError, ValueError):
    """A call received a value it cannot use; nothing was written."""


class PayloadError(InvalidArgument, TypeError):
    """A workflow input, activity argument, result or signal payload is not plain JSON."""


class DefinitionError(ContinuumError):
    """A @workflow or @activity cannot be defined as written (bad signature, duplicate name)."""


class UnknownWorkflow(ContinuumError):
    """No workflow of that name is registered in this process."""


class UnknownVersion(ContinuumError):
    """The run's (workflow, version_hash) is not loaded in this process."""

    workflow: str
    version_hash: str


class RunNotFound(ContinuumError):
    """No run exists with that id."""


class RunConflict(ContinuumError):
    """The run id already names a run with a different workflow or input."""


class RunFinished(ContinuumError):
    """The run is in a terminal state; it accepts no signal, cancel or retry."""


class JournalError(ContinuumError):
    """The journal database refused a statement; its own error is the ``__cause__``."""


class LeaseLost(JournalError):
    """The run's lease moved on (a newer fencing token exists); the write was not applied."""

    run_id: str
    token: int


class JournalUnavailable(JournalError):
    """The journal database cannot be reached: the connection was refused, lost or timed out.

    The journal is usable again once the database is back: its connections are made anew.
    ``url`` names the database (without its password); the driver's error is the ``__cause__``.
    """

    url: str


class NondeterminismError(ContinuumError):
    """Replaying the code did not reproduce the run's history."""

    run_id: str
    seq: int
    recorded: str
    requested: str


class WorkflowFailed(ContinuumError):
    """Client side: the awaited run ended ``failed`` or ``cancelled``."""

    run_id: str
    state: str
    error: dict[str, Any]

    @classmethod
    def of_run(cls, run_id: str, workflow: str, state: str, error: dict[str, Any] | None) -> WorkflowFailed:
        """The error of a run that ended ``state`` with ``error`` (its type and message, never a payload)."""
        error = error or {}
        reason = f"{error.get('type', '')}: {error.get('message', '')}"
        return cls(f"run {run_id} ({workflow}) {state}: {reason}", run_id=run_id, state=state, error=error)


class ActivityCancelled(ContinuumError):
    """Raised by ``heartbeat()`` inside an activity: its run was cancelled, or this attempt was abandoned.

    ``reason`` is ``cancelled`` (the run was asked to stop) or ``abandoned`` (the attempt timed out,
    missed its heartbeat timeout, or its run ended); whatever the attempt returns now is not recorded.
    """

    activity: str
    attempt: int
    reason: str


class WorkflowError(ContinuumError):
    """Base of errors raised inside a workflow body; a workflow may catch them."""


class ActivityFailed(WorkflowError):
    """An activity failed on its last attempt (or with a non-retryable error)."""

    activity: str
    error: dict[str, Any]
    attempts: int


class SignalTimeout(WorkflowError):
    """``ctx.wait_signal(name, timeout=...)`` elapsed before the signal arrived."""


class ChildFailed(WorkflowError):
    """A child workflow run ended ``failed``."""

    run_id: str
    workflow: str
    error: dict[str, Any]


class ChildCancelled(WorkflowError):
    """A child workflow run ended ``cancelled``."""


class ChildTimeout(WorkflowError):
    """``child.result(timeout=...)`` elapsed before the child run ended; the child keeps running."""

    run_id: str
    workflow: str


class RunCancelled(WorkflowError):
    """The run was cancelled; raised at the workflow's next blocking call."""


class WorkflowTimeout(WorkflowError):
    """The run is older than its ``@workflow(timeout=...)``; raised at the body's next blocking call.

    Letting it escape fails the run (a saga compensates first); ``deadline`` is an ISO time.
    """

    run_id: str
    deadline: str


__all__ = [
    "ActivityCancelled",
    "ActivityFailed",
    "ChildCancelled",
    "ChildFailed",
    "ChildTimeout",
    "ConfigurationError",
    "ContinuumError",
    "DefinitionError",
    "InvalidArgument",
    "JournalError",
    "JournalUnavailable",
    "LeaseLost",
    "NondeterminismError",
    "PayloadError",
    "RunCancelled",
    "RunConflict",
    "RunFinished",
    "RunNotFound",
    "SchemaNotMigrated",
    "SignalTimeout",
    "UnknownVersion",
    "UnknownWorkflow",
    "WorkflowError",
    "WorkflowFailed",
    "WorkflowTimeout",
]
