"""Reading ``erp_export``: one attempt, a draft's attempts, pages of attempts, the drafts to retry.

Each method is one statement, however many drafts or attempts it covers
(tests/test_ledger_queries.py counts them).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

from sqlalchemy import func, select

from dropzone.errors import ExportNotFoundError
from dropzone.ledger.engine import LedgerBase, row_id
from dropzone.ledger.models import ErpExport, ExportRecord, ExportStatus

StatusFilter = ExportStatus | str


class ExportQueriesMixin(LedgerBase):
    """The read side of ``Ledger`` for export attempts (the status changes are in ``repository``)."""

    def get_export(self, export_id: UUID | str) -> ExportRecord:
        with self._transaction() as session:
            row = session.get(ErpExport, row_id(export_id, ExportNotFoundError, "export"))
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

    def draft_attempts(self, draft_order_id: UUID, *, org_id: UUID | None = None) -> list[ExportRecord]:
        """Every attempt of one draft, first attempt first; only ``org_id``'s when given (API callers)."""
        query = select(ErpExport).where(ErpExport.draft_order_id == draft_order_id)
        if org_id is not None:
            query = query.where(ErpExport.org_id == org_id)
        with self._transaction() as session:
            return [ExportRecord.model_validate(row) for row in session.scalars(query.order_by(ErpExport.attempt))]

    def failed_draft_ids(self, org_id: UUID) -> list[UUID]:
        """Drafts of the org whose latest attempt is FAILED, newest failure first.

        A draft with a FAILED first attempt and an ACKED (or still running)
        retry is not failed. One statement: a window function numbers each
        draft's attempts from the highest down, the outer query keeps the
        drafts whose first-numbered (latest) attempt FAILED.
        """
        latest_first = func.row_number().over(
            partition_by=ErpExport.draft_order_id, order_by=ErpExport.attempt.desc()
        )
        ranked = (
            select(
                ErpExport.draft_order_id, ErpExport.status, ErpExport.created_at, ErpExport.attempt, ErpExport.id,
                latest_first.label("rank"),
            )
            .where(ErpExport.org_id == org_id)
            .subquery("ranked")
        )
        query = (
            select(ranked.c.draft_order_id)
            .where(ranked.c.rank == 1, ranked.c.status == ExportStatus.FAILED.value)
            .order_by(ranked.c.created_at.desc(), ranked.c.attempt.desc(), ranked.c.id)
        )
        with self._transaction() as session:
            return list(session.scalars(query))

    def drafts_without_attempt(self, draft_order_ids: Iterable[UUID]) -> list[UUID]:
        """Those of ``draft_order_ids`` with no attempt in the ledger, in the order given, each once.

        A run that failed before opening its first attempt (an inactive
        connection, say) has no row here; Temporal knows it. One statement for
        all of them, none for an empty list.
        """
        wanted = list(dict.fromkeys(draft_order_ids))
        if not wanted:
            return []
        query = select(ErpExport.draft_order_id).where(ErpExport.draft_order_id.in_(wanted)).distinct()
        with self._transaction() as session:
            known = set(session.scalars(query))
        return [draft_order_id for draft_order_id in wanted if draft_order_id not in known]
