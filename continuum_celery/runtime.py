"""The installed engine as the public API sees it: ``current()`` and the interfaces it returns.

``wf.start()``, ``wf.s()`` and ``get_run()`` call the :class:`Runtime`
interface; the engine (:class:`continuum_celery.installer.Continuum`)
implements it and registers itself here when it is installed, as Celery's
``current_app`` does. Nothing in this module imports the engine, so the API
layers never import the machinery that implements them.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .events import Event

if TYPE_CHECKING:
    from celery.canvas import Signature


class RunHandle(ABC):
    """A run, by id: its state, result and history; send it signals or cancel it.

    Returned by ``wf.start()`` and ``continuum_celery.get_run()``.
    """

    id: str

    @abstractmethod
    def status(self) -> str:
        """``pending``, ``running``, ``suspended``, ``completed``, ``failed``, ``cancelled`` or ``continued``."""

    @abstractmethod
    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run (following continue-as-new to the last run) and return its result.

        Raises:
            WorkflowFailed: the run failed or was cancelled (``state`` and ``error`` attributes).
            TimeoutError: ``timeout`` seconds passed first.
        """

    @abstractmethod
    def history(self) -> list[Event]:
        """Every event of the run, in order."""

    @abstractmethod
    def signal(self, name: str, payload: Any = None) -> None:
        """Deliver a signal durably to the run's inbox, even while it runs or sleeps.

        Raises:
            RunNotFound, RunFinished: no such run, or it has ended.
            PayloadError: ``payload`` is not JSON.
        """

    @abstractmethod
    def cancel(self) -> None:
        """Ask the run (and its children) to stop at the next step. Twice is harmless.

        Pending timers and signal waits are dropped, activities not yet started never start,
        running ones are not retried; the body sees ``RunCancelled`` at its next wait (a saga
        then compensates). A run that continued as new is cancelled in its successor.

        Raises:
            RunFinished: the run already completed or failed.
        """

    def get(self, timeout: float | None = None) -> Any:
        """Alias of :meth:`result`, as on Celery's ``AsyncResult``."""
        return self.result(timeout)

    def __repr__(self) -> str:
        return f"<RunHandle {self.id}>"


class Runtime(ABC):
    """What the public API needs of an installed engine."""

    @abstractmethod
    def start_run(
        self, definition: Any, input: Any, *, run_id: str | None = None, timeout: float | None = None
    ) -> RunHandle:
        """Create a run of ``definition`` (idempotent on ``run_id``) and dispatch its first step.

        ``timeout``: the run's execution timeout in seconds (None: the definition's own).
        """

    @abstractmethod
    def get_run(self, run_id: str) -> RunHandle:
        """A handle on an existing run. Raises RunNotFound."""

    @abstractmethod
    def start_signature(self, workflow: str, args: tuple[Any, ...], *, run_id: str | None = None) -> Signature:
        """A ``continuum.start`` signature for chains, groups and chords."""


_lock = threading.RLock()
_engines: dict[str, Runtime] = {}
_current: Runtime | None = None
_default: Callable[[], object] | None = None


def install(engine: Runtime, name: str) -> None:
    """Make ``engine`` the current one, and findable by ``name``."""
    global _current
    with _lock:
        _engines[name] = engine
        _current = engine


def installed() -> list[Runtime]:
    """Every engine installed in this process, in installation order."""
    with _lock:
        return list(_engines.values())


def set_default(factory: Callable[[], object]) -> None:
    """What installs an engine when none was installed yet (the bundled app, built on first use)."""
    global _default
    _default = factory


def current(name: str | None = None) -> Runtime:
    """The installed engine: by name, else the most recent, else the default one.

    Raises:
        ConfigurationError: no engine of that name, or none installed and no default.
    """
    with _lock:
        if name is not None:
            try:
                return _engines[name]
            except KeyError:
                raise ConfigurationError(
                    f"no Continuum engine named {name!r}; installed: {sorted(_engines)}"
                ) from None
        if _current is None and _default is not None:
            _default()
        if _current is None:
            raise ConfigurationError(
                "no continuum engine is installed: call Continuum(app, database_url=...) on your Celery app "
                "(or use the bundled app, continuum_celery.app)."
            )
        return _current
