"""The ledger: ERP connections and export attempts in PostgreSQL (psycopg 3).

Synchronous on purpose: activities that touch the database are plain ``def``
on the worker's thread pool. ``Ledger`` is the one class callers use; its parts
live next to it by concern: the engine and transactions (``engine``),
connections (``connections``), reading attempts (``export_queries``), rejected
ack files (``ack_rejections``), the schema (``schema``). This module holds
the attempts' life: opening one and moving its status.

Every status change is one conditional ``UPDATE ... WHERE status IN (...)
RETURNING``, so duplicate or concurrent calls (Temporal retries an activity
whose result was lost) can never move a status backwards.

The one way out of FAILED: an export that failed with ``ACK_TIMEOUT`` and then
gets the ERP's answer after all (``mark_acked_late``, ``record_late_error``).
The ERP has processed the order by then, so the row must say what the ERP
said, or an operator's retry would send the order twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, func, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from dropzone.errors import ACK_TIMEOUT, ExportNotFoundError, LedgerUnavailableError
from dropzone.ledger.ack_rejections import AckRejectionsMixin
from dropzone.ledger.connections import ConnectionsMixin
# migrations/env.py imports the database settings and migration names from here.
from dropzone.ledger.engine import DATABASE_URL_ENV, create_ledger_engine, psycopg_url, row_id, utcnow  # noqa: F401
from dropzone.ledger.export_queries import ExportQueriesMixin
from dropzone.ledger.models import (
    ACKABLE,
    EXPORT_FORMAT_VERSION,
    FAILABLE,
    LATE_ACK_KEY,
    SENDABLE,
    ErpExport,
    ExportRecord,
    ExportStatus,
)
from dropzone.ledger.schema import MIGRATION_LOCK_KEY, VERSION_TABLE  # noqa: F401

# How often open_attempt re-reads and retries after losing an insert race.
OPEN_ATTEMPT_TRIES = 20
# error_json.message of an export ACKED after its ack timeout (code stays ACK_TIMEOUT).
LATE_ACK_MESSAGE = "the ERP's ack arrived after the ack timeout; recorded late"


class Ledger(ConnectionsMixin, ExportQueriesMixin, AckRejectionsMixin):
    """Repository for ``erp_connection``, ``erp_export`` and ``erp_ack_rejection``."""

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
                export_id, created_at = uuid.uuid4(), utcnow()
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
            sent_at=utcnow(),
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

    def _transition(
        self, export_id: UUID | str, allowed_from: tuple[ExportStatus, ...], **values: Any
    ) -> ExportRecord:
        """Apply ``values`` if the row's status is in ``allowed_from``; else return it unchanged."""
        return self._update_where(
            export_id, ErpExport.status.in_([status.value for status in allowed_from]), **values
        )

    def _update_where(self, export_id: UUID | str, condition: ColumnElement[bool], **values: Any) -> ExportRecord:
        """Apply ``values`` if the row meets ``condition``; else return it unchanged."""
        target = row_id(export_id, ExportNotFoundError, "export")
        statement = (
            update(ErpExport)
            .where(ErpExport.id == target, condition)
            .values(**values, updated_at=utcnow())
            .returning(ErpExport)
            .execution_options(synchronize_session=False)
        )
        with self._transaction() as session:
            row = session.scalar(statement)
            if row is None:
                row = session.get(ErpExport, target)
                if row is None:
                    raise ExportNotFoundError(f"export {export_id} not found")
            return ExportRecord.model_validate(row)


def _awaits_late_ack() -> ColumnElement[bool]:
    """SQL twin of ``ExportRecord.awaits_late_ack``."""
    return (
        (ErpExport.status == ExportStatus.FAILED.value)
        & (ErpExport.error_json["code"].astext == ACK_TIMEOUT)
        & ~ErpExport.error_json.has_key(LATE_ACK_KEY)
    )
