"""Alembic environment for the ledger tables.

The database URL comes, in this order, from ``config.attributes["database_url"]``
(set by ``dropzone.ledger.migrate``), from ``DROPZONE_DATABASE_URL``, or from
``sqlalchemy.url`` in an ini file.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import text

from dropzone.ledger.models import Base
from dropzone.ledger.repository import (
    DATABASE_URL_ENV,
    MIGRATION_LOCK_KEY,
    VERSION_TABLE,
    create_ledger_engine,
    psycopg_url,
)

config = context.config

# Only the `alembic` command line has an ini file; when a service migrates
# programmatically, its own logging setup must not be replaced.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _database_url():
    url = (
        config.attributes.get("database_url")
        or os.environ.get(DATABASE_URL_ENV)
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise RuntimeError(f"no database URL: set {DATABASE_URL_ENV} or sqlalchemy.url")
    return psycopg_url(url)


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # A migration is a one-off: no pool to keep around afterwards.
    engine = create_ledger_engine(_database_url(), pooled=False)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                version_table=VERSION_TABLE,
            )
            with context.begin_transaction():
                # Workers starting together all call migrate(); PostgreSQL's
                # transactional DDL plus this lock lets exactly one do the work.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
