"""What a workflow body may call: ``ctx.run``, ``ctx.sleep``, ``ctx.wait_signal`` and the rest.

Every method turns into a journaled command (or a replayed one), so the body
stays deterministic: time, randomness and ids come from ``ctx``, never from the
standard library.
"""

from __future__ import annotations

import logging
import random as _random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, ParamSpec, TypeVar, cast, overload

from .activities import DEFAULT_RETRY, ActivityDefinition, BoundActivity, CallOptions, CeleryTask, activity_ref
from .errors import ContinuumError, InvalidArgument
from .events import Kind
from .futures import ActivityFuture, ChildHandle, Future
from .ids import validate_run_id
from .replay import ContinueAsNewRequest, Execution
from .saga import Saga
from .serialization import DEFAULT_MAX_PAYLOAD_BYTES, check_json, roundtrip
from .telemetry import run_logger
from .workflows import WorkflowDefinition

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class RunInfo:
    """Facts about the run a context belongs to."""

    run_id: str
    workflow: str
    version_hash: str
    _: KW_ONLY
    parent_run_id: str | None = None
    correlation_id: str | None = None


class WorkflowContext:
    """The body's handle on its run; the first argument of every workflow function."""

    def __init__(
        self,
        execution: Execution,
        info: RunInfo,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self._execution = execution
        self.info = info
        self._max_payload = max_payload_bytes
        self._saga = Saga(execution)
        self._rng: _random.Random | None = None
        self._patches: dict[str, bool] = {}
        self.logger: logging.LoggerAdapter[logging.Logger] = run_logger(
            "continuum_celery.workflow", info.run_id, info.workflow
        )

    @property
    def run_id(self) -> str:
        return self.info.run_id

    @property
    def is_replaying(self) -> bool:
        """True while the body re-executes commands already in the journal (e.g. to mute logs)."""
        return self._execution.replaying

    # ---- activities ------------------------------------------------------------------------

    @overload
    def start_activity(
        self, act: ActivityDefinition[P, R] | BoundActivity[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> ActivityFuture[R]: ...
    @overload
    def start_activity(self, act: CeleryTask, /, *args: Any, **kwargs: Any) -> ActivityFuture[Any]: ...

    def start_activity(self, act: Any, /, *args: Any, **kwargs: Any) -> ActivityFuture[Any]:
        """Schedule an activity and return a future; ``ctx.gather`` waits on several.

        ``act`` is an ``@activity``, a Celery task, or either with options bound
        (``act.options(queue=..., retry=..., timeout=..., idempotency_key=...)``); every
        argument after it goes to the activity.

        Raises:
            PayloadError: an argument is not JSON (nothing is scheduled).
        """
        bound = act if isinstance(act, BoundActivity) else None
        options = bound.call_options if bound is not None else CallOptions()
        name, defn, task = activity_ref(bound.activity if bound is not None else act)
        check_json(list(args), f"arguments of activity {name}", self._max_payload)
        check_json(kwargs, f"keyword arguments of activity {name}", self._max_payload)
        policy = options.retry or (defn.retry if defn else None) or DEFAULT_RETRY
        payload = {
            "args": roundtrip(list(args)),
            "kwargs": roundtrip(kwargs),
            "queue": options.queue or (defn.queue if defn else None) or getattr(task, "queue", None),
            "retry": policy.to_json(),
            "timeout": options.timeout or (defn.timeout if defn else None),
            "idempotency_key": options.idempotency_key,
        }
        if defn is not None:  # only the limits set: older histories stay as they were
            limits = {"heartbeat_timeout": defn.heartbeat_timeout, "schedule_to_close": defn.schedule_to_close}
            payload.update({k: v for k, v in limits.items() if v})
        cid, _ = self._execution.command(Kind.ACTIVITY_SCHEDULED, name, payload)
        if defn is not None and defn.compensation is not None:
            undo_retry = defn.compensation_retry.to_json() if defn.compensation_retry else payload["retry"]
            self._saga.remember(cid, name, {**payload, "retry": undo_retry})
        return ActivityFuture(self._execution, cid, f"activity {name}")

    @overload
    def run(self, act: ActivityDefinition[P, R] | BoundActivity[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...
    @overload
    def run(self, act: CeleryTask, /, *args: Any, **kwargs: Any) -> Any: ...

    def run(self, act: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Run an activity durably and return its result (``start_activity(...).result()``).

        Raises:
            ActivityFailed: the activity failed on its last attempt.
        """
        return self.start_activity(act, *args, **kwargs).result()

    def gather(self, futures: Sequence[Future[Any]], *, return_exceptions: bool = False) -> list[Any]:
        """Wait for every future; return results in order.

        With ``return_exceptions=True`` a failure takes its place in the list as the
        exception; otherwise the first failure (by position) is raised once all are done.
        """
        futures = list(futures)
        self._execution.wait(
            lambda: all(f.done() for f in futures),
            f"{len(futures)} futures",
        )
        results: list[Any] = []
        first_error: BaseException | None = None
        for f in futures:
            try:
                results.append(f.result())
            except ContinuumError as exc:
                if not return_exceptions and first_error is None:
                    first_error = exc
                results.append(exc)
        if first_error is not None:
            raise first_error
        return results

    # ---- time --------------------------------------------------------------------------

    def now(self) -> datetime:
        """The current time, journaled: a replay sees the same value."""
        assert self._execution.now is not None
        _, payload = self._execution.command(Kind.SIDE_EFFECT, "now", {"value": self._execution.now.isoformat()})
        return datetime.fromisoformat(payload["value"])

    def sleep(self, duration: float | timedelta) -> None:
        """Sleep durably: a journaled timer; the run holds no worker, message or lease meanwhile."""
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
        if seconds < 0:
            raise InvalidArgument(f"ctx.sleep({duration!r}): the duration must not be negative.")
        assert self._execution.now is not None
        self._timer(self._execution.now + timedelta(seconds=seconds))

    def sleep_until(self, when: datetime) -> None:
        """Sleep durably until ``when`` (an aware datetime)."""
        if when.tzinfo is None:
            raise InvalidArgument(f"ctx.sleep_until({when!r}): pass an aware datetime (with tzinfo).")
        self._timer(when)

    def _timer(self, fire_at: datetime) -> None:
        cid, _ = self._execution.command(
            Kind.TIMER_SCHEDULED, None, {"fire_at": fire_at.astimezone(timezone.utc).isoformat()}
        )
        Future(self._execution, cid, "a timer").result()

    # ---- signals and children --------------------------------------------------------------

    def wait_signal(self, name: str, timeout: float | timedelta | None = None) -> Any:
        """Wait for the next signal ``name`` sent to this run and return its payload.

        Signals are consumed in arrival order, each once; one sent before the wait is kept.

        Raises:
            SignalTimeout: ``timeout`` elapsed first.
        """
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"ctx.wait_signal(name={name!r}): the name must be a non-empty str.")
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        assert self._execution.now is not None
        timeout_at = None if seconds is None else (self._execution.now + timedelta(seconds=seconds)).isoformat()
        cid, _ = self._execution.command(Kind.SIGNAL_WAIT, name, {"timeout_at": timeout_at})
        self._execution.receive(cid, name)
        return Future(self._execution, cid, f"signal {name!r}").result()

    def start_child(self, wf: WorkflowDefinition[R], input: Any = None, *, run_id: str | None = None) -> ChildHandle[R]:
        """Start a child run; its end reaches this run as an outcome. Returns its handle.

        The child carries this run's correlation id; a child still running when this run
        ends (or is cancelled) is cancelled.
        """
        if not isinstance(wf, WorkflowDefinition):
            raise InvalidArgument(f"ctx.start_child needs a @workflow, got {wf!r}.")
        check_json(input, f"input of child workflow {wf.name}", self._max_payload)
        # Derived from the parent and the command number, so a replay names the same child.
        derived = uuid.uuid5(uuid.NAMESPACE_URL, f"continuum:{self.run_id}:child:{self._execution.next_command_id}")
        proposed = validate_run_id(run_id) if run_id else str(derived)
        cid, payload = self._execution.command(
            Kind.CHILD_STARTED,
            wf.name,
            {"run_id": proposed, "input": roundtrip(input), "version_hash": wf.version_hash},
        )
        return ChildHandle(self._execution, cid, f"child {wf.name}", payload["run_id"])

    def continue_as_new(self, input: Any) -> ContinueAsNewRequest:
        """End this run as ``continued`` and start the next one with ``input``: ``return ctx.continue_as_new(x)``."""
        check_json(input, f"continue_as_new input of {self.info.workflow}", self._max_payload)
        return ContinueAsNewRequest(roundtrip(input))

    # ---- determinism helpers -----------------------------------------------------------

    def uuid4(self) -> uuid.UUID:
        """A random UUID, journaled."""
        _, payload = self._execution.command(Kind.SIDE_EFFECT, "uuid4", {"value": str(uuid.uuid4())})
        return uuid.UUID(payload["value"])

    def random(self) -> float:
        """A random float in [0, 1), journaled."""
        _, payload = self._execution.command(Kind.SIDE_EFFECT, "random", {"value": _random.random()})
        return float(payload["value"])

    def patched(self, patch_id: str) -> bool:
        """Tell whether this run takes the new branch of the in-place change ``patch_id``.

        A run reaching this point for the first time gets True and records a
        ``patch_marker``; replaying a history that went past this point without the
        marker gives False, so runs started on the old code keep the old branch. The
        first answer holds for the rest of the run (later calls with the same id repeat
        it). The edit changes the body's version hash: declare the old hash in
        ``@workflow(compatible_with=...)`` so workers serve old runs with this body.

        Raises:
            InvalidArgument: ``patch_id`` is not a non-empty str.
        """
        known = self._patches.get(patch_id)
        if known is not None:
            return known
        if not isinstance(patch_id, str) or not patch_id:
            raise InvalidArgument(f"ctx.patched({patch_id!r}): the patch id must be a non-empty str.")
        recorded = self._execution.peek_command()
        if recorded is not None and recorded.kind is Kind.PATCH_MARKER and recorded.name == patch_id:
            self._execution.skip_command()
            decided = True
        elif recorded is not None or self._execution.history_ended:
            decided = False
        else:
            self._execution.command(Kind.PATCH_MARKER, patch_id, {})
            decided = True
        self._patches[patch_id] = decided
        return decided

    def deprecate_patch(self, patch_id: str) -> None:
        """Retire a patch once no run needs its old branch: the code keeps only the new branch.

        Consumes the marker a history recorded at this point (so runs that took the new
        branch still replay) and records nothing new. Old histories without the marker
        no longer replay: call it only when ``continuum versions`` shows none is left.
        """
        recorded = self._execution.peek_command()
        if recorded is not None and recorded.kind is Kind.PATCH_MARKER and recorded.name == patch_id:
            self._execution.skip_command()

    # ---- sagas -------------------------------------------------------------------------

    def compensate(self) -> list[dict[str, Any]]:
        """Run the compensations of completed activities, newest completion first, each once.

        Activities with a compensation that are still in flight are waited for first, so
        an effect that lands late is undone too. Each compensation is a durable task with
        its own retry policy; one that fails on its last attempt is recorded and the next
        one still runs.

        Returns one record per compensation: ``{"activity", "command_id", "ok", "error"}``.
        """
        return self._saga.compensate()

    # ---- internals ---------------------------------------------------------------------

    def checked_result(self, value: T) -> T:
        check_json(value, f"result of workflow {self.info.workflow}", self._max_payload)
        return cast(T, roundtrip(value))


def context_factory(
    info: RunInfo, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> Callable[[Execution], WorkflowContext]:
    """A ``make_context`` for :class:`Execution` bound to one run."""
    return lambda execution: WorkflowContext(execution, info, max_payload_bytes)
