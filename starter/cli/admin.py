"""`dropzone migrate`, `keygen`, `worker`."""

from __future__ import annotations

from dropzone.crypto import ConfigCipher
from dropzone.ledger import migrate
from dropzone.settings import load_settings
from starter.cli.common import (
    app,
    handle_errors,
    out,
    run,
)


@app.command("migrate")
@handle_errors
def migrate_cmd() -> None:
    """Create or upgrade the database schema (Alembic upgrade head)."""
    settings = load_settings()
    migrate(settings.require_database_url())
    out.print(f"database {settings.database_label()} is at the latest schema")


@app.command("keygen")
@handle_errors
def keygen_cmd() -> None:
    """Print a new key for DROPZONE_CONFIG_KEYS."""
    print(ConfigCipher.generate_key())


@app.command("worker")
@handle_errors
def worker_cmd() -> None:
    """Run the Temporal worker until SIGTERM / Ctrl-C."""
    from worker import run_worker

    run(run_worker(load_settings()))


# --- connections --------------------------------------------------------------
