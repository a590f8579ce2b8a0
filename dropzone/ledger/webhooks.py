"""The ``erp_webhook_event`` table: each status callback and how its delivery went.

The sending activity records every try (``record_try``): the row is created on
the first and updated on the next ones, so an operator sees a PENDING event
with its number of tries and last error while the receiver is down, then
DELIVERED (with the receiver's HTTP status) or GAVE_UP. A try recorded after
the row is final changes nothing: a status never goes back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from dropzone.ledger.models import ErpWebhookEvent, WebhookEventRecord, WebhookEventStatus
from dropzone.ledger.engine import autocommit
from dropzone.ledger.repository import Ledger
from dropzone.webhooks import WebhookEvent

_TABLE = ErpWebhookEvent.__table__
# What a later try of the same event changes (the rest is the event's identity and first try).
_TRY_COLUMNS = ("status", "delivery_attempts", "response_status", "last_error", "delivered_at", "updated_at")
# Our own text, but it may quote what a receiver answered: keep rows small.
MAX_ERROR_CHARS = 1000


def _record_try_statement() -> Any:
    """Every try's upsert, built once: the row's values are bound parameters, so that the one
    statement run for every callback sent is not built and keyed anew each time (about a
    third of a try's CPU; benchmarks/bench_webhooks.py)."""
    insert = pg_insert(_TABLE).values({column.name: bindparam(column.name) for column in _TABLE.c})
    return insert.on_conflict_do_update(
        index_elements=[_TABLE.c.event_id],
        set_={name: insert.excluded[name] for name in _TRY_COLUMNS},
        # A final row stays final (a late duplicate try of a delivered event).
        where=_TABLE.c.status == WebhookEventStatus.PENDING.value,
    ).returning(*_TABLE.c)


_RECORD_TRY = _record_try_statement()


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.replace("\x00", "\ufffd")
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


class WebhookEvents:
    """Repository of ``erp_webhook_event`` on the ledger's engine and transactions."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def record_try(
        self,
        *,
        org_id: UUID,
        erp_connection_id: UUID,
        event: WebhookEvent,
        tries: int,
        delivered: bool,
        response_status: int | None = None,
        error: str | None = None,
    ) -> WebhookEventRecord:
        now = datetime.now(UTC)
        status = WebhookEventStatus.DELIVERED if delivered else WebhookEventStatus.PENDING
        params = {
            **self._identity(org_id, erp_connection_id, event),
            "status": status.value,
            "delivery_attempts": tries,
            "response_status": response_status,
            "last_error": None if delivered else _clip(error),
            "delivered_at": now if delivered else None,
            "created_at": now,
            "updated_at": now,
        }
        return self._upsert(_RECORD_TRY, event.event_id, params)

    def give_up(
        self, *, org_id: UUID, erp_connection_id: UUID, event: WebhookEvent, reason: str
    ) -> WebhookEventRecord:
        """PENDING (or never tried) → GAVE_UP, keeping the number of tries and the last error."""
        now = datetime.now(UTC)
        insert = pg_insert(ErpWebhookEvent).values(
            **self._identity(org_id, erp_connection_id, event),
            status=WebhookEventStatus.GAVE_UP.value,
            delivery_attempts=0,
            last_error=_clip(reason),
            created_at=now,
            updated_at=now,
        )
        upsert = insert.on_conflict_do_update(
            index_elements=[ErpWebhookEvent.event_id],
            # The receiver's last answer says more than "the window ran out": keep it.
            set_={
                "status": WebhookEventStatus.GAVE_UP.value,
                "last_error": func.coalesce(ErpWebhookEvent.last_error, _clip(reason)),
                "updated_at": now,
            },
            where=ErpWebhookEvent.status == WebhookEventStatus.PENDING.value,
        ).returning(*_TABLE.c)
        return self._upsert(upsert, event.event_id)

    @staticmethod
    def _identity(org_id: UUID, erp_connection_id: UUID, event: WebhookEvent) -> dict[str, object]:
        return {
            "event_id": event.event_id,
            "org_id": org_id,
            "erp_connection_id": erp_connection_id,
            "draft_order_id": event.draft_order_id,
            "export_id": event.export_id,
            "attempt": event.attempt,
            "event_type": event.type,
            "occurred_at": event.occurred_at,
        }

    def _upsert(self, statement: Any, event_id: UUID, params: dict[str, Any] | None = None) -> WebhookEventRecord:
        # Core, not the ORM: one of these runs for every callback sent (benchmarks/bench_webhooks.py).
        # The upsert is atomic by itself, and the read after it needs no snapshot of the same moment.
        with autocommit(self._ledger.engine) as connection:
            row = connection.execute(statement, params).mappings().one_or_none()
            if row is None:  # already final: a status never goes back
                row = connection.execute(select(_TABLE).where(_TABLE.c.event_id == event_id)).mappings().one()
            return WebhookEventRecord.model_validate(dict(row))

    def for_draft(self, draft_order_id: UUID) -> list[WebhookEventRecord]:
        """Every status callback of one draft's exports, in the order they happened."""
        query = (
            select(ErpWebhookEvent)
            .where(ErpWebhookEvent.draft_order_id == draft_order_id)
            .order_by(ErpWebhookEvent.occurred_at, ErpWebhookEvent.created_at)
        )
        with self._ledger._transaction() as session:
            return [WebhookEventRecord.model_validate(row) for row in session.scalars(query)]
