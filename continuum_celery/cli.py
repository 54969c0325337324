"""The ``continuum`` command (also ``celery -A app continuum ...``)."""

from __future__ import annotations

import sys
from typing import Any

import click

from .config import Settings


def _database_url(url: str | None) -> str:
    return url or Settings.resolve().database_url


@click.group()
def main() -> None:
    """Durable workflows for Celery: operate the journal and its runs."""


@main.command()
@click.option("--database-url", envvar="CONTINUUM_DATABASE_URL", help="Journal URL (default: CONTINUUM_DATABASE_URL).")
def migrate(database_url: str | None) -> None:
    """Create or upgrade continuum's tables."""
    from .journal.schema import migrate as apply

    url = _database_url(database_url)
    head = apply(url)
    click.echo(f"journal at revision {head}")


@main.command()
@click.option("--database-url", default=None, help="Journal URL (default: a fresh SQLite file).")
@click.option("--redis-url", default=None, help="Redis for wake-ups (default: none, in-process).")
def demo(database_url: str | None, redis_url: str | None) -> None:
    """Run example workflows on the embedded default (no servers needed)."""
    from .demo import run_demo

    sys.exit(run_demo(database_url, redis_url, echo=click.echo))


def celery_command(*args: Any, **kwargs: Any) -> Any:
    """Entry point for ``celery continuum``: the same commands."""
    return main
