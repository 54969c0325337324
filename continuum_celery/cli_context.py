"""What every ``continuum`` command works with, and how its failures become exit codes.

Exit codes (stable; scripts may rely on them):

===  ==============================================================================
 0   done
 1   the command ran and the answer is "no": run not found, run finished, refused,
     or ``doctor`` found a run that needs attention
 2   usage: a bad option, argument or JSON payload (nothing was written)
 3   unavailable: the journal database or the broker cannot be reached or used
===  ==============================================================================
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from typing import TYPE_CHECKING, Any

import click

from .config import Settings
from .errors import (
    ConfigurationError,
    ContinuumError,
    InvalidArgument,
    JournalError,
    LeaseLost,
    RunFinished,
    RunNotFound,
)
from .journal.records import Dispatch

if TYPE_CHECKING:
    from celery import Celery

    from .installer import Continuum
    from .journal.sql import SQLJournal

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class CommandFailed(click.ClickException):
    """The answer is no (not found, finished, refused): ``Error: <message>``, exit 1, no traceback."""

    exit_code = EXIT_FAILED


class BadInput(click.ClickException):
    """A value the command cannot use; nothing was written: exit 2."""

    exit_code = EXIT_USAGE


class Unavailable(click.ClickException):
    """The journal database or the broker cannot be reached or used: exit 3."""

    exit_code = EXIT_UNAVAILABLE


def translate(exc: BaseException) -> click.ClickException | None:
    """The CLI failure for an error raised by a command, or None to let it propagate."""
    if isinstance(exc, (RunNotFound, RunFinished)):
        return CommandFailed(str(exc))
    if isinstance(exc, InvalidArgument):
        return BadInput(str(exc))
    # The journal translates database errors into the tree: unreachable, unmigrated, or a refused statement.
    if isinstance(exc, ConfigurationError) or (isinstance(exc, JournalError) and not isinstance(exc, LeaseLost)):
        return Unavailable(str(exc))
    if isinstance(exc, ContinuumError):
        return CommandFailed(str(exc))
    return None


class ContinuumGroup(click.Group):
    """A click group whose commands fail with a message and a documented exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, translating continuum and database errors (see the module's exit codes)."""
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as exc:
            failure = translate(exc)
            if failure is None:
                raise
            raise failure from exc


def load_app(ref: str) -> Celery:
    """Import a Celery app the way ``celery -A`` does (``pkg.module`` or ``pkg.module:app``).

    Raises:
        click.UsageError: the module or attribute cannot be loaded.
    """
    from celery.app.utils import find_app

    try:
        app: Celery = find_app(ref)
    except Exception as exc:
        raise click.UsageError(f"cannot load the Celery app {ref!r}: {type(exc).__name__}: {exc}") from exc
    return app


class Operator:
    """The deployment a command operates: settings, journal and broker, resolved lazily.

    The journal URL is, first found: ``--database-url``; the settings of the Continuum engine
    installed on the Celery app (``-A app``, or the app of ``celery -A app continuum``); the
    environment (``CONTINUUM_DATABASE_URL``); the default. Messages go through that app's
    broker, or the bundled app's (``continuum_celery.app``) when no app is given.

    Args:
        app: a Celery app, an import path to one, or None.
        database_url: an explicit journal URL.
    """

    def __init__(self, app: Celery | str | None = None, database_url: str | None = None) -> None:
        self._app_ref = app
        self.explicit_database_url = database_url
        self._journal: SQLJournal | None = None
        self._reader: SQLJournal | None = None

    @cached_property
    def app(self) -> Celery | None:
        """The Celery app named on the command line (None when none was)."""
        ref = self._app_ref
        return load_app(ref) if isinstance(ref, str) else ref

    @cached_property
    def engine(self) -> Continuum | None:
        """The Continuum engine installed on :attr:`app`, if any."""
        from .installer import engines_of

        if self.app is None:
            return None
        engines = engines_of(self.app)
        if not engines:  # an app may install its engine in a module listed in its `imports`
            self.app.loader.import_default_modules()
            engines = engines_of(self.app)
        return engines[0] if engines else None

    @cached_property
    def settings(self) -> Settings:
        """The engine's settings, else the environment's, with ``--database-url`` on top."""
        base = self.engine.settings if self.engine is not None else Settings.resolve()
        if self.explicit_database_url:
            from dataclasses import replace

            return replace(base, database_url=self.explicit_database_url)
        return base

    @property
    def journal(self) -> SQLJournal:
        """The SQL journal (opened on first use; checks the schema is migrated).

        Raises:
            ConfigurationError: a missing SQLite file (none is created); SchemaNotMigrated: run
            ``continuum migrate``. JournalUnavailable: the database cannot be reached.
        """
        if self._journal is None:
            from .journal.sql import SQLJournal
            from .journal.sql_engine import require_existing_journal

            # Only `continuum migrate` creates a journal; every other command acts on an existing one.
            require_existing_journal(self.settings.database_url, "this command acts on runs already journaled")
            self._journal = SQLJournal(
                self.settings.database_url, activity_timeout=self.settings.activity_timeout, queue=self.settings.queue
            )
        return self._journal

    @property
    def reader(self) -> SQLJournal:
        """The journal opened read-only, for commands that only read: it never writes or creates a journal.

        Raises:
            ConfigurationError: no such SQLite file; SchemaNotMigrated; JournalUnavailable.
        """
        if self._reader is None:
            from .journal.sql import SQLJournal

            self._reader = SQLJournal(
                self.settings.database_url,
                activity_timeout=self.settings.activity_timeout,
                queue=self.settings.queue,
                read_only=True,
            )
        return self._reader

    @cached_property
    def broker_engine(self) -> Continuum:
        """The engine whose app and dispatcher reach the workers (the bundled app's without ``-A``)."""
        if self.engine is not None:
            return self.engine
        from .installer import current

        return current()

    def dispatch(self, dispatches: Iterable[Dispatch]) -> str | None:
        """Send the messages a journal write asked for; return a warning if the broker is unreachable.

        The journal already holds the change, so an unreachable broker delays it, never loses it.
        """
        from .worker_probe import broker_error

        pending = list(dispatches)
        if not pending:
            return None
        engine = self.broker_engine
        problem = broker_error(engine.app)
        if problem is not None:
            return (
                f"{problem}. The journal has the change; the beat sweep dispatches it within "
                f"{engine.settings.redispatch_after:g}s of the broker and workers being back."
            )
        engine.dispatcher.send(pending)
        return None

    def close(self) -> None:
        """Release the journals' connections."""
        for journal in (self._journal, self._reader):
            if journal is not None:
                journal.close()
        self._journal = self._reader = None


def operator(ctx: click.Context) -> Operator:
    """The :class:`Operator` of the running command."""
    obj = ctx.find_object(Operator)
    if obj is None:  # a subcommand invoked on its own (tests): operate the environment's deployment
        obj = ctx.ensure_object(Operator)
    return obj


__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "BadInput",
    "CommandFailed",
    "ContinuumGroup",
    "Operator",
    "Unavailable",
    "load_app",
    "operator",
    "translate",
]
