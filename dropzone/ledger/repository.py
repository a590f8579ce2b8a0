"""The ledger: ERP connections and export attempts in PostgreSQL (psycopg 3).

Synchronous on purpose: activities that touch the database are plain ``def``
on the worker's thread pool. One ``Ledger`` (one pooled engine) per process —
a new connection per transaction made the ledger ten times slower.

Every status change is one conditional ``UPDATE ... WHERE status IN (...)
RETURNING``, so duplicate or concurrent calls (Temporal retries an activity
whose result was lost) can never move a status backwards.

The one way out of FAILED: an export that failed with ``ACK_TIMEOUT`` and then
gets the ERP's answer after all (``mark_acked_late``, ``record_late_error``).
The ERP has processed the order by then, so the row must say what the ERP
said, or an operator's retry would send the order twice.
"""

from __future__ import annotations

import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import ColumnElement, Engine, create_engine, func, literal, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from dropzone.crypto import ConfigCipher
from dropzone.errors import (
    ACK_TIMEOUT,
    ConnectionInactiveError,
    ConnectionNotFoundError,
    ExportNotFoundError,
    InvalidConfigError,
    LedgerUnavailableError,
)
from dropzone.ledger.models import (
    ACKABLE,
    EXPORT_FORMAT_VERSION,
    FAILABLE,
    LATE_ACK_KEY,
    SENDABLE,
    AckRejectionRecord,
    ConnectionRecord,
    ConnectionSummary,
    ErpAckRejection,
    ErpConnection,
    ErpExport,
    ExportRecord,
    ExportStatus,
)

DATABASE_URL_ENV = "DROPZONE_DATABASE_URL"
# Our own version table, so the ledger can share a database with the order
# backend's Alembic history without either overwriting the other's.
VERSION_TABLE = "dropzone_alembic_version"
# Serialises concurrent `migrate` calls (several workers starting at once).
MIGRATION_LOCK_KEY = zlib.crc32(b"orderflow-dropzone.migrations")
# libpq waits forever by default; an activity must fail fast and let Temporal retry.
CONNECT_TIMEOUT_SECONDS = 10
# A rejection reason is our own text, but it quotes a parser's position report:
# keep one hostile file from filling the table.
MAX_REJECTION_REASON_CHARS = 2000
# How often open_attempt re-reads and retries after losing an insert race.
OPEN_ATTEMPT_TRIES = 20
# error_json.message of an export ACKED after its ack timeout (code stays ACK_TIMEOUT).
LATE_ACK_MESSAGE = "the ERP's ack arrived after the ack timeout; recorded late"

StatusFilter = ExportStatus | str


# --- URLs and the one place where database errors are translated -----------


def psycopg_url(database_url: str | URL) -> URL:
    """``postgresql://`` (as printed by most tools) → the psycopg 3 driver."""
    try:
        url = make_url(database_url)
    except sa_exc.ArgumentError:
        # Not chained: the cause would repeat the URL, password included.
        raise InvalidConfigError(
            "invalid database URL (expected postgresql+psycopg://user:password@host:5432/dbname)"
        ) from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def describe_database(url: str | URL) -> str:
    """``host:port/dbname`` for messages: never the user or password."""
    url = make_url(url)
    host: Any = url.host or url.query.get("host") or "localhost"
    if isinstance(host, tuple):  # repeated ?host= (multi-host URLs)
        host = ",".join(host)
    return f"{host}:{url.port or 5432}/{url.database or ''}"


_UNAVAILABLE = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,  # pool exhausted: the database is too slow or too busy
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


@contextmanager
def translate_db_errors(url: str | URL) -> Iterator[None]:
    """Turn every "cannot talk to the database" error into LedgerUnavailableError.

    The message is built from host, port and database name only: SQLAlchemy's and
    libpq's own messages are kept as ``__cause__`` for logs, never shown.
    """
    try:
        yield
    except _UNAVAILABLE as exc:
        raise LedgerUnavailableError(f"database unavailable: {describe_database(url)}") from exc
    except sa_exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        raise LedgerUnavailableError(f"database unavailable: {describe_database(url)}") from exc


def create_ledger_engine(database_url: str | URL, *, pool_size: int = 10, pooled: bool = True) -> Engine:
    url = psycopg_url(database_url)
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    if not pooled:  # one-off work such as migrations
        return create_engine(url, poolclass=NullPool, connect_args=connect_args, hide_parameters=True)
    return create_engine(
        url,
        # A statement's parameters are customer data (ERP texts, order ids) and
        # would otherwise be quoted in every DBAPIError's text.
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        # A pooled connection may have been cut by a database restart or a
        # firewall; test it on checkout instead of failing the activity.
        pool_pre_ping=True,
        connect_args=connect_args,
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- the repository ---------------------------------------------------------


class Ledger:
    """Repository for ``erp_connection``, ``erp_export`` and ``erp_ack_rejection``."""

    def __init__(self, engine: Engine, cipher: ConfigCipher) -> None:
        self._engine = engine
        self._cipher = cipher
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def connect(cls, database_url: str, cipher: ConfigCipher, *, pool_size: int = 10) -> Ledger:
        return cls(create_ledger_engine(database_url, pool_size=pool_size), cipher)

    @property
    def engine(self) -> Engine:
        return self._engine

    def dispose(self) -> None:
        self._engine.dispose()

    def __repr__(self) -> str:
        return f"Ledger({describe_database(self._engine.url)})"

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with translate_db_errors(self._engine.url), self._sessions.begin() as session:
            yield session

    # --- connections ---------------------------------------------------------

    def add_connection(self, org_id: UUID, connector_type: str, config: dict[str, Any]) -> ConnectionSummary:
        connection_id = uuid.uuid4()
        encrypted = self._cipher.encrypt(config, connection_id=connection_id)  # bound to this row
        now = _utcnow()
        insert = (
            pg_insert(ErpConnection)
            .values(
                id=connection_id,
                org_id=org_id,
                connector_type=connector_type,
                config_encrypted=encrypted,
                active=True,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=[ErpConnection.org_id, ErpConnection.connector_type])
            .returning(ErpConnection)
        )
        with self._transaction() as session:
            row = session.scalar(insert)
            if row is None:
                raise InvalidConfigError(f"org {org_id} already has a {connector_type} connection")
            return ConnectionSummary.model_validate(row)

    def get_connection(self, connection_id: UUID | str) -> ConnectionRecord:
        """The connection with its decrypted config; inactive ones too (``active=False``)."""
        with self._transaction() as session:
            row = self._connection_row(session, connection_id)
            summary = ConnectionSummary.model_validate(row)
            token = row.config_encrypted
        config = self._cipher.decrypt(token, connection_id=summary.id)
        return ConnectionRecord(**summary.model_dump(), config=config)

    def get_active_connection(self, connection_id: UUID | str) -> ConnectionRecord:
        """``get_connection`` for work on the dropzone: an inactive connection is refused.

        Checked by every new attempt and every ack poll, so deactivating a
        connection stops its deliveries and polls at their next step.
        """
        record = self.get_connection(connection_id)
        if not record.active:
            raise ConnectionInactiveError(
                f"connection {record.id} is inactive (deactivated by an operator); "
                f"reactivate it with 'dropzone connections update {record.id} --activate'"
            )
        return record

    def list_connections(self, org_id: UUID | None = None) -> list[ConnectionSummary]:
        query = select(ErpConnection).order_by(ErpConnection.created_at, ErpConnection.id)
        if org_id is not None:
            query = query.where(ErpConnection.org_id == org_id)
        with self._transaction() as session:
            return [ConnectionSummary.model_validate(row) for row in session.scalars(query)]

    def update_connection_config(
        self, connection_id: UUID | str, config: dict[str, Any]
    ) -> ConnectionSummary:
        cid = _uuid(connection_id, ConnectionNotFoundError, "connection")
        return self._update_connection(cid, config_encrypted=self._cipher.encrypt(config, connection_id=cid))

    def record_connection_test(self, connection_id: UUID | str, success: bool) -> ConnectionSummary:
        return self._update_connection(connection_id, last_test_at=_utcnow(), last_test_success=success)

    def set_connection_active(self, connection_id: UUID | str, active: bool) -> ConnectionSummary:
        return self._update_connection(connection_id, active=active)

    def rotate_keys(self) -> int:
        """Re-encrypt every connection config with the first key, bound to its row; returns the row count.

        One transaction: either every row can be read with the configured keys
        and is rewritten, or nothing changes (ConfigKeyError names the row).
        """
        with self._transaction() as session:
            rows = session.execute(
                select(ErpConnection.id, ErpConnection.config_encrypted).with_for_update()
            ).all()
            for connection_id, token in rows:
                # updated_at stays: the config itself did not change.
                session.execute(
                    update(ErpConnection)
                    .where(ErpConnection.id == connection_id)
                    .values(config_encrypted=self._cipher.rotate(token, connection_id=connection_id))
                )
            return len(rows)

    def _update_connection(self, connection_id: UUID | str, **values: Any) -> ConnectionSummary:
        statement = (
            update(ErpConnection)
            .where(ErpConnection.id == _uuid(connection_id, ConnectionNotFoundError, "connection"))
            .values(**values, updated_at=_utcnow())
            .returning(ErpConnection)
            .execution_options(synchronize_session=False)
        )
        with self._transaction() as session:
            row = session.scalar(statement)
            if row is None:
                raise ConnectionNotFoundError(f"connection {connection_id} not found")
            return ConnectionSummary.model_validate(row)

    @staticmethod
    def _connection_row(session: Session, connection_id: UUID | str) -> ErpConnection:
        row = session.get(ErpConnection, _uuid(connection_id, ConnectionNotFoundError, "connection"))
        if row is None:
            raise ConnectionNotFoundError(f"connection {connection_id} not found")
        return row

    # --- exports -------------------------------------------------------------

    def open_attempt(
        self,
        *,
        org_id: UUID,
        erp_connection_id: UUID,
        draft_order_id: UUID,
        workflow_id: str,
        workflow_run_id: str,
        run_seq: int,
        filename_for: Callable[[UUID, datetime], str],
        storage_key_for: Callable[[str], str],
    ) -> ExportRecord:
        """The attempt that run ``workflow_run_id`` opened as its ``run_seq``-th, creating it once.

        Races (the same activity twice, or two runs for one draft) are settled by
        the unique keys: the insert does nothing on conflict, and the loser reads
        again — the row its twin created, or the next free attempt number.
        """
        for _ in range(OPEN_ATTEMPT_TRIES):
            with self._transaction() as session:
                existing = session.scalar(
                    select(ErpExport).where(
                        ErpExport.workflow_run_id == workflow_run_id, ErpExport.run_seq == run_seq
                    )
                )
                if existing is not None:
                    return ExportRecord.model_validate(existing)
                self._check_connection_owner(session, erp_connection_id, org_id)
                last = session.scalar(
                    select(func.max(ErpExport.attempt)).where(ErpExport.draft_order_id == draft_order_id)
                )
                export_id, created_at = uuid.uuid4(), _utcnow()
                filename = filename_for(export_id, created_at)
                row = session.scalar(
                    pg_insert(ErpExport)
                    .values(
                        id=export_id,
                        org_id=org_id,
                        erp_connection_id=erp_connection_id,
                        draft_order_id=draft_order_id,
                        attempt=(last or 0) + 1,
                        export_format_version=EXPORT_FORMAT_VERSION,
                        export_storage_key=storage_key_for(filename),
                        filename=filename,
                        status=ExportStatus.PENDING.value,
                        workflow_id=workflow_id,
                        workflow_run_id=workflow_run_id,
                        run_seq=run_seq,
                        created_at=created_at,
                        updated_at=created_at,
                    )
                    .on_conflict_do_nothing()
                    .returning(ErpExport)
                )
                if row is not None:
                    return ExportRecord.model_validate(row)
        # Only reachable under sustained contention on one draft: let Temporal retry later.
        raise LedgerUnavailableError(
            f"could not open an attempt for draft order {draft_order_id}: "
            f"{OPEN_ATTEMPT_TRIES} conflicting concurrent inserts"
        )

    def record_stored(self, export_id: UUID | str, *, sha256: str, size_bytes: int) -> ExportRecord:
        """Checksum and size of the stored body; only while PENDING (a sent file's facts are final)."""
        return self._transition(export_id, SENDABLE, sha256=sha256, size_bytes=size_bytes)

    def mark_sent(self, export_id: UUID | str, *, dropzone_path: str) -> ExportRecord:
        return self._transition(
            export_id,
            SENDABLE,
            status=ExportStatus.SENT.value,
            dropzone_path=dropzone_path,
            sent_at=_utcnow(),
        )

    def mark_acked(
        self, export_id: UUID | str, *, erp_order_id: str | None, acked_at: datetime
    ) -> ExportRecord:
        return self._transition(
            export_id, ACKABLE, status=ExportStatus.ACKED.value, erp_order_id=erp_order_id, acked_at=acked_at
        )

    def mark_failed(self, export_id: UUID | str, *, error_json: dict[str, Any]) -> ExportRecord:
        return self._transition(export_id, FAILABLE, status=ExportStatus.FAILED.value, error_json=error_json)

    def mark_acked_late(
        self, export_id: UUID | str, *, erp_order_id: str | None, acked_at: datetime
    ) -> ExportRecord:
        """FAILED (ACK_TIMEOUT) → ACKED when the ERP's ack comes after the timeout.

        ``error_json`` keeps code ``ACK_TIMEOUT`` with ``"late_ack": true`` and a
        message saying so: the trace an operator sees next to ACKED. Any other
        row (on time, already late-recorded, failed for another reason) is
        returned unchanged.
        """
        trace = {LATE_ACK_KEY: True, "message": LATE_ACK_MESSAGE}
        return self._update_where(
            export_id,
            _awaits_late_ack(),
            status=ExportStatus.ACKED.value,
            erp_order_id=erp_order_id,
            acked_at=acked_at,
            error_json=ErpExport.error_json.op("||", return_type=JSONB)(literal(trace, JSONB)),
        )

    def record_late_error(self, export_id: UUID | str, *, error_json: dict[str, Any]) -> ExportRecord:
        """FAILED (ACK_TIMEOUT) stays FAILED, with the ERP's error when its error_ file comes late.

        Replacing "no answer" with the ERP's answer tells an operator the ERP
        did not take the order, so a retry is safe. Other rows are returned unchanged.
        """
        return self._update_where(export_id, _awaits_late_ack(), error_json={**error_json, LATE_ACK_KEY: True})

    def get_export(self, export_id: UUID | str) -> ExportRecord:
        with self._transaction() as session:
            row = session.get(ErpExport, _uuid(export_id, ExportNotFoundError, "export"))
            if row is None:
                raise ExportNotFoundError(f"export {export_id} not found")
            return ExportRecord.model_validate(row)

    def get_export_by_filename(self, filename: str, *, erp_connection_id: UUID) -> ExportRecord | None:
        """The export of ``erp_connection_id`` that wrote ``filename``; None for any other.

        Scoped to one connection because the name comes from an ack file that
        connection's ERP wrote: an ERP may only ever answer its own exports,
        never another organisation's, even when it knows their file names.
        """
        query = select(ErpExport).where(
            ErpExport.filename == filename, ErpExport.erp_connection_id == erp_connection_id
        )
        with self._transaction() as session:
            row = session.scalar(query)
            return ExportRecord.model_validate(row) if row is not None else None

    def list_exports(
        self,
        *,
        draft_order_id: UUID | None = None,
        org_id: UUID | None = None,
        status: StatusFilter | None = None,
        since: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[ExportRecord]:
        """Newest first (by creation time, then attempt number)."""
        query = select(ErpExport)
        if draft_order_id is not None:
            query = query.where(ErpExport.draft_order_id == draft_order_id)
        if org_id is not None:
            query = query.where(ErpExport.org_id == org_id)
        if status is not None:
            query = query.where(ErpExport.status == ExportStatus(status).value)
        if since is not None:
            query = query.where(ErpExport.created_at >= since)
        query = (
            query.order_by(ErpExport.created_at.desc(), ErpExport.attempt.desc(), ErpExport.id)
            .limit(limit)
            .offset(offset)
        )
        with self._transaction() as session:
            return [ExportRecord.model_validate(row) for row in session.scalars(query)]

    def latest_export(self, draft_order_id: UUID) -> ExportRecord | None:
        """The draft's highest attempt, whatever its status."""
        query = (
            select(ErpExport)
            .where(ErpExport.draft_order_id == draft_order_id)
            .order_by(ErpExport.attempt.desc())
            .limit(1)
        )
        with self._transaction() as session:
            row = session.scalar(query)
            return ExportRecord.model_validate(row) if row is not None else None

    # --- rejected ack files -------------------------------------------------

    def record_ack_rejection(
        self,
        *,
        erp_connection_id: UUID,
        ack_file: str,
        reason: str,
        moved_to: str,
        org_id: UUID | None = None,
        export_id: UUID | None = None,
    ) -> AckRejectionRecord:
        """Remember one ack file moved to ``error/``; recording the same move twice keeps one row."""
        if len(reason) > MAX_REJECTION_REASON_CHARS:
            reason = reason[: MAX_REJECTION_REASON_CHARS - 1] + "…"
        values = {
            "id": uuid.uuid4(),
            "org_id": org_id,
            "erp_connection_id": erp_connection_id,
            "export_id": export_id,
            "ack_file": ack_file,
            "reason": reason.replace("\x00", "\ufffd"),  # PostgreSQL text cannot hold NUL
            "moved_to": moved_to,
            "created_at": _utcnow(),
        }
        insert = pg_insert(ErpAckRejection).values(**values).on_conflict_do_nothing().returning(ErpAckRejection)
        with self._transaction() as session:
            row = session.scalar(insert)
            if row is None:  # a twin (a racing poller, a retried activity) recorded this move
                row = session.scalar(
                    select(ErpAckRejection).where(
                        ErpAckRejection.erp_connection_id == erp_connection_id,
                        ErpAckRejection.moved_to == moved_to,
                    )
                )
            return AckRejectionRecord.model_validate(row)

    def list_ack_rejections(
        self,
        org_id: UUID | None = None,
        connection_id: UUID | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AckRejectionRecord]:
        """Newest first."""
        query = select(ErpAckRejection)
        if org_id is not None:
            query = query.where(ErpAckRejection.org_id == org_id)
        if connection_id is not None:
            query = query.where(ErpAckRejection.erp_connection_id == connection_id)
        if since is not None:
            query = query.where(ErpAckRejection.created_at >= since)
        query = query.order_by(ErpAckRejection.created_at.desc(), ErpAckRejection.id).limit(limit)
        with self._transaction() as session:
            return [AckRejectionRecord.model_validate(row) for row in session.scalars(query)]

    def _transition(
        self, export_id: UUID | str, allowed_from: tuple[ExportStatus, ...], **values: Any
    ) -> ExportRecord:
        """Apply ``values`` if the row's status is in ``allowed_from``; else return it unchanged."""
        return self._update_where(
            export_id, ErpExport.status.in_([status.value for status in allowed_from]), **values
        )

    def _update_where(self, export_id: UUID | str, condition: ColumnElement[bool], **values: Any) -> ExportRecord:
        """Apply ``values`` if the row meets ``condition``; else return it unchanged."""
        row_id = _uuid(export_id, ExportNotFoundError, "export")
        statement = (
            update(ErpExport)
            .where(ErpExport.id == row_id, condition)
            .values(**values, updated_at=_utcnow())
            .returning(ErpExport)
            .execution_options(synchronize_session=False)
        )
        with self._transaction() as session:
            row = session.scalar(statement)
            if row is None:
                row = session.get(ErpExport, row_id)
                if row is None:
                    raise ExportNotFoundError(f"export {export_id} not found")
            return ExportRecord.model_validate(row)

    @staticmethod
    def _check_connection_owner(session: Session, connection_id: UUID, org_id: UUID) -> None:
        owner = session.scalar(select(ErpConnection.org_id).where(ErpConnection.id == connection_id))
        if owner is None:
            raise ConnectionNotFoundError(f"connection {connection_id} not found")
        if owner != org_id:
            raise InvalidConfigError(f"connection {connection_id} does not belong to org {org_id}")


def _awaits_late_ack() -> ColumnElement[bool]:
    """SQL twin of ``ExportRecord.awaits_late_ack``."""
    return (
        (ErpExport.status == ExportStatus.FAILED.value)
        & (ErpExport.error_json["code"].astext == ACK_TIMEOUT)
        & ~ErpExport.error_json.has_key(LATE_ACK_KEY)
    )


def _uuid(value: UUID | str, not_found: type[Exception], what: str) -> UUID:
    """Ids arrive as strings from the CLI; a malformed one names no existing row."""
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise not_found(f"{what} {value} not found") from None


# --- schema -----------------------------------------------------------------


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
