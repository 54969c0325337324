"""Database errors become continuum's errors where the SQL journal meets its driver (as httpx maps its transport's).

Nothing from SQLAlchemy or a driver escapes the adapter: a caller sees
:class:`~continuum_celery.errors.JournalUnavailable` (the database cannot be
reached: refused, lost, timed out), :class:`~continuum_celery.errors.SchemaNotMigrated`
(a continuum table or column is missing) or :class:`~continuum_celery.errors.JournalError`
(the database refused a statement), each raised from the driver's error. Integrity
errors stay SQLAlchemy's inside the adapter, which turns them into answers (a start
that raced another) or into ``JournalError`` itself.

:func:`translate_errors` hooks the journal's engine (every connection and statement of it);
:func:`database_errors` covers what runs outside the adapter's engines (Alembic's
migrations, making an engine from a URL), :func:`escaped_error` a driver error raised
outside a statement (a psycopg pipeline's last sync).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import ExceptionContext

from ..errors import ConfigurationError, ContinuumError, JournalError, JournalUnavailable, SchemaNotMigrated

#: PostgreSQL SQLSTATEs (or their classes) that mean the database cannot serve now: connection
#: exceptions, insufficient resources, shutdowns, statement and lock timeouts, system errors.
_UNAVAILABLE_STATES = ("08", "53", "57P01", "57P02", "57P03", "57014", "55P03", "58")
#: PostgreSQL SQLSTATEs of a missing table or column.
_MISSING_SCHEMA_STATES = ("42P01", "42703")
#: What SQLite says when the database file cannot be used now, or lacks a table or column.
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open database file", "disk i/o error", "disk is full")
_SQLITE_MISSING_SCHEMA = ("no such table", "no such column", "has no column named")


def translate_errors(engine: sa.Engine) -> None:
    """Raise continuum's errors for the database errors of every connection and statement of ``engine``."""
    sa.event.listen(engine, "handle_error", _on_error)


def _on_error(context: ExceptionContext) -> ContinuumError | None:
    # A failed pre-ping is SQLAlchemy's to handle: it reconnects, and raises if that fails too.
    if context.is_pre_ping or not isinstance(context.sqlalchemy_exception, sa.exc.DBAPIError):
        return None
    where = _where(context.engine.url) if context.engine is not None else "(unknown)"
    # No connection: the error came while connecting.
    lost = context.is_disconnect or context.connection is None
    translated = translation(context.sqlalchemy_exception, where, lost=lost)
    if translated is not None:
        raise translated  # SQLAlchemy raises it from the driver's error, after its cleanup
    return None


@contextmanager
def database_errors(url: str | sa.URL) -> Iterator[None]:
    """Translate the database errors escaping the block, which works on the database at ``url``.

    Raises:
        ConfigurationError: ``url`` is not a database URL SQLAlchemy can use.
        JournalUnavailable, SchemaNotMigrated, JournalError: see the module.
    """
    try:
        yield
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise ConfigurationError(f"the database URL {_where(url)} is not usable: {exc}") from exc
    except sa.exc.DBAPIError as exc:
        translated = translation(exc, _where(url), lost=exc.connection_invalidated)
        if translated is None:
            raise
        raise translated from exc.orig  # the driver's error, as from an engine's statements


def escaped_error(exc: Exception, engine: sa.Engine, statement: str) -> Exception:
    """What to raise for a driver error that escaped SQLAlchemy's execution (a pipeline's last sync).

    Continuum's error; or SQLAlchemy's integrity error, which the adapter answers itself.
    """
    wrapped = sa.exc.DBAPIError.instance(statement, None, exc, engine.dialect.loaded_dbapi.Error)
    if not isinstance(wrapped, sa.exc.DBAPIError):  # not the driver's error after all: a bug, raised as it is
        return wrapped
    return translation(wrapped, _where(engine.url), lost=False) or wrapped


def translation(exc: sa.exc.DBAPIError, where: str, *, lost: bool) -> ContinuumError | None:
    """The error of continuum's tree for ``exc`` (None: an integrity error, the adapter's to answer).

    ``lost``: the connection was lost, or could not be made.
    """
    if isinstance(exc, sa.exc.IntegrityError):
        return None
    cause = " ".join(str(exc.orig).split())  # one line: the driver's may span several
    state = getattr(exc.orig, "sqlstate", None)
    text = cause.lower()
    sqlite = exc.orig.__class__.__module__.startswith("sqlite3")
    if lost or _unavailable(exc, state, text, sqlite):
        return JournalUnavailable(
            f"cannot reach the journal database {where} ({cause}); "
            "check the database URL (CONTINUUM_DATABASE_URL) and that the server is up.",
            url=where,
            sqlstate=state,
        )
    if (state or "").startswith(_MISSING_SCHEMA_STATES) or (sqlite and any(m in text for m in _SQLITE_MISSING_SCHEMA)):
        return SchemaNotMigrated(
            f"the journal database {where} lacks a continuum table or column ({cause}): run `continuum migrate` "
            f"(with CONTINUUM_DATABASE_URL={where}).",
            url=where,
        )
    return JournalError(f"the journal database {where} refused a statement: {cause}", url=where, sqlstate=state)


def _unavailable(exc: sa.exc.DBAPIError, state: str | None, text: str, sqlite: bool) -> bool:
    if sqlite:
        return any(m in text for m in _SQLITE_UNAVAILABLE)
    if state is None:  # psycopg gives a failed or broken connection no SQLSTATE
        return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))
    return state.startswith(_UNAVAILABLE_STATES)


def _where(url: str | sa.URL) -> str:
    """The URL as messages show it: without its password."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return repr(str(url))
