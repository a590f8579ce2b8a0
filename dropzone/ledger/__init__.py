"""ERP connections and export attempts in PostgreSQL."""

from dropzone.ledger.models import (
    EXPORT_FORMAT_VERSION,
    AckRejectionRecord,
    Base,
    ConnectionRecord,
    ConnectionSummary,
    ErpAckRejection,
    ErpConnection,
    ErpExport,
    ExportRecord,
    ExportStatus,
)
from dropzone.ledger.engine import (
    DATABASE_URL_ENV,
    create_ledger_engine,
    describe_database,
    psycopg_url,
    translate_db_errors,
)
from dropzone.ledger.repository import Ledger
from dropzone.ledger.schema import VERSION_TABLE, alembic_config, migrate

__all__ = [
    "DATABASE_URL_ENV",
    "EXPORT_FORMAT_VERSION",
    "VERSION_TABLE",
    "AckRejectionRecord",
    "Base",
    "ConnectionRecord",
    "ConnectionSummary",
    "ErpAckRejection",
    "ErpConnection",
    "ErpExport",
    "ExportRecord",
    "ExportStatus",
    "Ledger",
    "alembic_config",
    "create_ledger_engine",
    "describe_database",
    "migrate",
    "psycopg_url",
    "translate_db_errors",
]
