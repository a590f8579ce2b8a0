"""The ledger's schema: Alembic migrations run from code (``dropzone migrate``, every worker at start)."""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from dropzone.ledger.engine import psycopg_url, translate_db_errors

# Our own version table, so the ledger can share a database with the order
# backend's Alembic history without either overwriting the other's.
VERSION_TABLE = "dropzone_alembic_version"
# Serialises concurrent `migrate` calls (several workers starting at once).
MIGRATION_LOCK_KEY = zlib.crc32(b"orderflow-dropzone.migrations")


def alembic_config(database_url: str | URL) -> Config:
    """An Alembic config built in code, so migrations run from an installed wheel and any cwd."""
    import migrations  # the top-level package shipped next to ``dropzone``

    config = Config()
    # configparser interpolates '%': escape it in the path.
    config.set_main_option("script_location", str(Path(migrations.__file__).parent).replace("%", "%%"))
    # Passed as an attribute, not an ini option, so '%' in a password survives.
    config.attributes["database_url"] = psycopg_url(database_url)
    return config


# Alembic's `context` is one module-global proxy: two threads migrating at once
# would overwrite each other's. Other processes are kept apart by env.py's
# advisory lock.
_MIGRATE_LOCK = threading.Lock()


def migrate(database_url: str, revision: str = "head") -> None:
    """``alembic upgrade head`` for the ledger tables; safe to call from several workers at once."""
    with _MIGRATE_LOCK, translate_db_errors(database_url):
        command.upgrade(alembic_config(database_url), revision)
