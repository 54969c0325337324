"""Alembic environment of continuum's own tables (its version table is continuum_alembic_version)."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from continuum_celery.journal.schema import VERSION_TABLE
from continuum_celery.journal.sql_engine import normalise_url

config = context.config
url = normalise_url(config.get_main_option("sqlalchemy.url") or "")
connectable = engine_from_config({"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool)

with connectable.connect() as connection:
    context.configure(connection=connection, version_table=VERSION_TABLE, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()
