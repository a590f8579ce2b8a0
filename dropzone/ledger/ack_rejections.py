"""``erp_ack_rejection`` rows: ack files the ERP wrote that were refused and moved to ``error/``."""

from __future__ import annotations

import uuid
from datetime import datetime
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from dropzone.ledger.engine import LedgerBase, utcnow
from dropzone.ledger.models import AckRejectionRecord, ErpAckRejection

# A rejection reason is our own text, but it quotes a parser's position report:
# keep one hostile file from filling the table.
MAX_REJECTION_REASON_CHARS = 2000


class AckRejectionsMixin(LedgerBase):
    """The rejected-ack part of ``Ledger``."""

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
            "created_at": utcnow(),
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
