"""Request and response bodies of the HTTP API (they make up its OpenAPI document).

A draft's exports and an attempt have exactly the fields of ``dropzone status --json`` and
``dropzone list --json`` (tests/test_api_reads.py compares them), so scripts move
between the CLI and the API without translating.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from dropzone.export_v1 import DraftOrder
from dropzone.ledger import ExportRecord
from dropzone.ledger.models import WebhookEventRecord
from dropzone.settings import Settings
from starter.cli.common import workflow_url

ExportStatusName = Literal["PENDING", "SENT", "ACKED", "FAILED"]


class PushRequest(BaseModel):
    """Body of ``POST /draft-orders/{draft_order_id}/push`` (documentation: the route reads the body itself)."""

    model_config = ConfigDict(extra="forbid")

    erp_connection_id: UUID = Field(description="A connection of the token's organisation.")
    draft: DraftOrder = Field(description="The approved draft order; its `draft_order_id` must equal the path's.")
    force: bool = Field(False, description="Export again although an earlier run of this draft has closed.")


class PushAccepted(BaseModel):
    draft_order_id: UUID
    workflow_id: str
    run_id: str | None = Field(description="The run the push started or joined.")
    started_new: bool = Field(description="False when the push joined a run that was already open.")
    status_url: str = Field(description="`GET` this for every attempt of the export.")


class RetryPushRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, description="Why, for the operators (stored with the retry).")


class RetryAccepted(BaseModel):
    draft_order_id: UUID
    workflow_id: str
    attempt: int = Field(description="The number of the new attempt (2 for the first retry).")
    status_url: str


class ExportAttempt(BaseModel):
    """One attempt of one export: the fields of ``dropzone status --json``."""

    attempt: int
    export_id: UUID
    draft_order_id: UUID
    org_id: UUID
    erp_connection_id: UUID
    filename: str
    status: ExportStatusName
    erp_order_id: str | None
    error: dict[str, Any] | None
    sha256: str | None
    size_bytes: int | None
    dropzone_path: str | None
    export_storage_key: str
    created_at: datetime
    sent_at: datetime | None
    acked_at: datetime | None
    updated_at: datetime
    workflow_id: str | None
    workflow_run_id: str | None
    workflow_url: str | None = Field(description="The run in the Temporal UI, when DROPZONE_TEMPORAL_UI_URL is set.")

    @classmethod
    def of(cls, record: ExportRecord, settings: Settings) -> ExportAttempt:
        return cls(
            attempt=record.attempt, export_id=record.id, draft_order_id=record.draft_order_id, org_id=record.org_id,
            erp_connection_id=record.erp_connection_id, filename=record.filename, status=record.status.value,
            erp_order_id=record.erp_order_id, error=record.error_json, sha256=record.sha256,
            size_bytes=record.size_bytes, dropzone_path=record.dropzone_path,
            export_storage_key=record.export_storage_key, created_at=record.created_at, sent_at=record.sent_at,
            acked_at=record.acked_at, updated_at=record.updated_at, workflow_id=record.workflow_id,
            workflow_run_id=record.workflow_run_id,
            workflow_url=workflow_url(settings, record.workflow_id, record.workflow_run_id),
        )


class DraftExports(BaseModel):
    draft_order_id: UUID
    org_id: UUID
    attempts: list[ExportAttempt] = Field(description="Oldest first.")
    webhook_events: list[WebhookEventRecord] = Field(
        description="Every status callback of the draft's exports and its delivery state, in the order they happened."
    )


class ExportFilters(BaseModel):
    org_id: UUID
    status: ExportStatusName | None
    since: datetime | None


class ExportPage(BaseModel):
    page: int
    limit: int
    has_more: bool
    filters: ExportFilters
    exports: list[ExportAttempt] = Field(description="Newest first.")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    checks: dict[str, str] = Field(description="Each dependency (temporal, postgresql, s3) and `ok`.")
