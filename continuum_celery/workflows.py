"""``@workflow``: a function of ``(ctx, input)``, replayed from its journal, with its identity and versions."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from . import runtime
from .activities import positive_seconds, qualified_name
from .errors import DefinitionError, InvalidArgument, UnknownWorkflow
from .hashing import version_hash as compute_version_hash
from .runtime import RunHandle
from .versioning import check_compatible_with
from .versioning import registry as workflow_registry

if TYPE_CHECKING:
    from celery.canvas import Signature
    from celery.result import AsyncResult

R = TypeVar("R")


class WorkflowDefinition(Generic[R]):
    """A workflow function with its identity: logical name, version number, version hash."""

    def __init__(
        self,
        fn: Callable[[Any, Any], R],
        name: str,
        *,
        version: int = 1,
        saga: bool = False,
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
        seconds = positive_seconds(timeout, f"{self.name}.start(timeout={timeout!r})", InvalidArgument)
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
            f"workflow {qualified_name(fn)} must be a function of (ctx, input); it takes "
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
        name = workflow or qualified_name(f)
        compatible = check_compatible_with(compatible_with, f"@workflow {name}")
        seconds = positive_seconds(timeout, f"@workflow(timeout={timeout!r})")
        limit = float(seconds) if seconds is not None else None
        defn = WorkflowDefinition(f, name, version=version, saga=saga, compatible_with=compatible, timeout=limit)
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
