"""``erp_connection`` rows: each ERP's dropzone config, stored encrypted and bound to its row."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from dropzone.errors import ConnectionInactiveError, ConnectionNotFoundError, InvalidConfigError
from dropzone.ledger.engine import LedgerBase, row_id, utcnow
from dropzone.ledger.models import ConnectionRecord, ConnectionSummary, ErpConnection


class ConnectionsMixin(LedgerBase):
    """The connection part of ``Ledger``."""

    def add_connection(self, org_id: UUID, connector_type: str, config: dict[str, Any]) -> ConnectionSummary:
        connection_id = uuid.uuid4()
        encrypted = self._cipher.encrypt(config, connection_id=connection_id)  # bound to this row
        now = utcnow()
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
        cid = row_id(connection_id, ConnectionNotFoundError, "connection")
        return self._update_connection(cid, config_encrypted=self._cipher.encrypt(config, connection_id=cid))

    def record_connection_test(self, connection_id: UUID | str, success: bool) -> ConnectionSummary:
        return self._update_connection(connection_id, last_test_at=utcnow(), last_test_success=success)

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
            .where(ErpConnection.id == row_id(connection_id, ConnectionNotFoundError, "connection"))
            .values(**values, updated_at=utcnow())
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
        row = session.get(ErpConnection, row_id(connection_id, ConnectionNotFoundError, "connection"))
        if row is None:
            raise ConnectionNotFoundError(f"connection {connection_id} not found")
        return row

    @staticmethod
    def _check_connection_owner(session: Session, connection_id: UUID, org_id: UUID) -> None:
        owner = session.scalar(select(ErpConnection.org_id).where(ErpConnection.id == connection_id))
        if owner is None:
            raise ConnectionNotFoundError(f"connection {connection_id} not found")
        if owner != org_id:
            raise InvalidConfigError(f"connection {connection_id} does not belong to org {org_id}")
