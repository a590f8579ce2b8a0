"""Tables ``erp_connection``, ``erp_export``, ``erp_ack_rejection``,
``api_token`` and ``erp_webhook_event``,
and the value objects the repository hands out instead of live ORM rows.

An export that FAILED with ``ACK_TIMEOUT`` still takes the ERP's answer when it
comes late (``ExportRecord.awaits_late_ack``): ``error_json`` then carries
``"late_ack": true``, so the late answer stays visible next to the status.

The schema itself is created by ``migrations/versions``; these models must stay
identical to it (``tests/dropzone/test_ledger.py`` compares the two).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dropzone.errors import ACK_TIMEOUT

EXPORT_FORMAT_VERSION = "orderflow_export_json_v1"

# Deterministic constraint names so that migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class ExportStatus(StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    ACKED = "ACKED"
    FAILED = "FAILED"


# Statuses from which each transition may start; anything else is returned
# unchanged so that a status never goes backwards.
SENDABLE = (ExportStatus.PENDING,)
ACKABLE = (ExportStatus.PENDING, ExportStatus.SENT)  # an ack can beat the SENT record
FAILABLE = (ExportStatus.PENDING, ExportStatus.SENT)

# Key in ``error_json`` marking an ack_/error_ file that arrived after the ack
# timeout had already failed the export (and was recorded all the same).
LATE_ACK_KEY = "late_ack"

_STATUS_CHECK = "status IN ({})".format(", ".join(f"'{s.value}'" for s in ExportStatus))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _timestamp(*, nullable: bool = False) -> Any:
    if nullable:
        return mapped_column(DateTime(timezone=True), nullable=True)
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class ErpConnection(Base):
    __tablename__ = "erp_connection"

    id: Mapped[uuid.UUID] = mapped_column(
        Uuid, primary_key=True, default=uuid.uuid4, server_default=text("gen_random_uuid()")
    )
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    connector_type: Mapped[str] = mapped_column(Text)
    config_encrypted: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    last_test_at: Mapped[datetime | None] = _timestamp(nullable=True)
    last_test_success: Mapped[bool | None]
    created_at: Mapped[datetime] = _timestamp()
    updated_at: Mapped[datetime] = _timestamp()

    __table_args__ = (
        # Names fixed by the order backend's schema, which other services may already use.
        Index("idx_erp_connection_org_type", "org_id", "connector_type", unique=True),
        Index("idx_erp_connection_org_active", "org_id", "active"),
    )


class ErpExport(Base):
    """One attempt to deliver one draft order. A retry is a new row."""

    __tablename__ = "erp_export"

    id: Mapped[uuid.UUID] = mapped_column(
        Uuid, primary_key=True, default=uuid.uuid4, server_default=text("gen_random_uuid()")
    )
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    erp_connection_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("erp_connection.id"))
    draft_order_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    attempt: Mapped[int]
    export_format_version: Mapped[str] = mapped_column(
        Text, server_default=text(f"'{EXPORT_FORMAT_VERSION}'")
    )
    export_storage_key: Mapped[str] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    dropzone_path: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), server_default=text(f"'{ExportStatus.PENDING.value}'"))
    erp_order_id: Mapped[str | None] = mapped_column(Text)
    error_json: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    workflow_id: Mapped[str | None] = mapped_column(Text)
    # Extension: (run id, n-th attempt of that run) makes opening an attempt
    # idempotent when Temporal runs the same activity twice.
    workflow_run_id: Mapped[str | None] = mapped_column(Text)
    run_seq: Mapped[int | None]
    sent_at: Mapped[datetime | None] = _timestamp(nullable=True)
    acked_at: Mapped[datetime | None] = _timestamp(nullable=True)
    created_at: Mapped[datetime] = _timestamp()
    updated_at: Mapped[datetime] = _timestamp()

    __table_args__ = (
        CheckConstraint(_STATUS_CHECK, name="status"),
        UniqueConstraint("draft_order_id", "attempt"),
        UniqueConstraint("workflow_run_id", "run_seq"),
        Index("idx_erp_export_filename", "filename", unique=True),
    )


# Declared outside the class because DESC needs the mapped column.
Index(
    "idx_erp_export_draft",
    ErpExport.org_id,
    ErpExport.draft_order_id,
    ErpExport.created_at.desc(),
)


class ErpAckRejection(Base):
    """An ack file the ERP wrote that we refused and moved to ``<ack_path>/error/``.

    Kept so that operators see every rejected ack (``dropzone acks rejected``)
    rather than finding them by accident in the error folder. No foreign keys:
    a rejection may name no export (an ack for an unknown file) and must
    outlive the rows it mentions.
    """

    __tablename__ = "erp_ack_rejection"

    id: Mapped[uuid.UUID] = mapped_column(
        Uuid, primary_key=True, default=uuid.uuid4, server_default=text("gen_random_uuid()")
    )
    org_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    erp_connection_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    export_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    ack_file: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    moved_to: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _timestamp()

    __table_args__ = (
        # One move is one rejection: two pollers racing for the same file (or a
        # retried activity) record it once.
        UniqueConstraint("erp_connection_id", "moved_to"),
    )


Index(
    "idx_erp_ack_rejection_connection",
    ErpAckRejection.erp_connection_id,
    ErpAckRejection.created_at.desc(),
)
Index(
    "idx_erp_ack_rejection_org",
    ErpAckRejection.org_id,
    ErpAckRejection.created_at.desc(),
)


class ApiToken(Base):
    """A token of the HTTP API: it acts for one organisation. Only the sha256 of
    the token is stored, so a database dump gives nobody a working token."""

    __tablename__ = "api_token"

    id: Mapped[uuid.UUID] = mapped_column(
        Uuid, primary_key=True, default=uuid.uuid4, server_default=text("gen_random_uuid()")
    )
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    name: Mapped[str] = mapped_column(Text)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _timestamp()
    revoked_at: Mapped[datetime | None] = _timestamp(nullable=True)


Index("idx_api_token_org", ApiToken.org_id)


class WebhookEventStatus(StrEnum):
    PENDING = "PENDING"  # not delivered yet; retried with backoff
    DELIVERED = "DELIVERED"
    GAVE_UP = "GAVE_UP"  # its retry window ran out


_WEBHOOK_STATUS_CHECK = "status IN ({})".format(", ".join(f"'{s.value}'" for s in WebhookEventStatus))


class ErpWebhookEvent(Base):
    """One status callback of one export (``dropzone/webhooks.py``) and how its delivery went.

    Written by the sending activity on every try; no foreign keys, like the
    ack rejections: the delivery record must outlive what it mentions.
    """

    __tablename__ = "erp_webhook_event"

    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    erp_connection_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    draft_order_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    export_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    attempt: Mapped[int]
    event_type: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))
    delivery_attempts: Mapped[int] = mapped_column(server_default=text("0"))
    response_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = _timestamp(nullable=True)
    created_at: Mapped[datetime] = _timestamp()
    updated_at: Mapped[datetime] = _timestamp()

    __table_args__ = (CheckConstraint(_WEBHOOK_STATUS_CHECK, name="status"),)


Index("idx_erp_webhook_event_draft", ErpWebhookEvent.draft_order_id, ErpWebhookEvent.occurred_at)


# --- value objects -----------------------------------------------------------


def _as_utc(value: datetime) -> datetime:
    # PostgreSQL answers in the session's TimeZone; records are always UTC.
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)


class _ConnectionFields(_Record):
    id: uuid.UUID
    org_id: uuid.UUID
    connector_type: str
    active: bool
    last_test_at: UtcDatetime | None
    last_test_success: bool | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ConnectionSummary(_ConnectionFields):
    """A connection without its config: safe to log and to show."""


# Not a subclass of ConnectionSummary on purpose: a record must never pass
# where a summary (something safe to serialise) is expected.
class ConnectionRecord(_ConnectionFields):
    """A connection with its decrypted config (credentials): keep it inside activities."""

    config: dict[str, Any] = Field(repr=False)

    def summary(self) -> ConnectionSummary:
        return ConnectionSummary.model_validate(self.model_dump(exclude={"config"}))


class ExportRecord(_Record):
    id: uuid.UUID
    org_id: uuid.UUID
    erp_connection_id: uuid.UUID
    draft_order_id: uuid.UUID
    attempt: int
    export_format_version: str
    export_storage_key: str
    filename: str
    sha256: str | None
    size_bytes: int | None
    dropzone_path: str | None
    status: ExportStatus
    erp_order_id: str | None
    error_json: dict[str, Any] | None
    workflow_id: str | None
    workflow_run_id: str | None
    run_seq: int | None
    sent_at: UtcDatetime | None
    acked_at: UtcDatetime | None
    created_at: UtcDatetime
    updated_at: UtcDatetime

    @property
    def awaits_late_ack(self) -> bool:
        """FAILED only because no answer came within the ack timeout, and none has come since.

        The ERP may still answer: its ack or error file is recorded, not rejected.
        """
        error = self.error_json or {}
        return (
            self.status == ExportStatus.FAILED
            and error.get("code") == ACK_TIMEOUT
            and not error.get(LATE_ACK_KEY)
        )

    @property
    def answered_late(self) -> bool:
        """The ERP's ack or error file arrived after the ack timeout and was recorded."""
        return bool((self.error_json or {}).get(LATE_ACK_KEY))


class WebhookEventRecord(_Record):
    """One status callback and its delivery state (``dropzone status`` shows these)."""

    event_id: uuid.UUID
    org_id: uuid.UUID
    erp_connection_id: uuid.UUID
    draft_order_id: uuid.UUID
    export_id: uuid.UUID | None
    attempt: int
    event_type: str
    status: WebhookEventStatus
    delivery_attempts: int
    response_status: int | None
    last_error: str | None
    occurred_at: UtcDatetime
    delivered_at: UtcDatetime | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class AckRejectionRecord(_Record):
    """One rejected ack file: what it was, why, and where it went."""

    id: uuid.UUID
    org_id: uuid.UUID | None
    erp_connection_id: uuid.UUID
    export_id: uuid.UUID | None
    ack_file: str
    reason: str
    moved_to: str
    created_at: UtcDatetime
