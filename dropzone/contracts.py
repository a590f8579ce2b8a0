"""The typed objects that cross the Temporal boundary.

Every workflow, signal, query and activity takes exactly one of these and
returns one. They are plain pydantic models serialised by the one data
converter (``temporalio.contrib.pydantic``) that worker, starter and tests
share. None of them may ever carry a credential or an export body: activities
load the connection by id and stream bodies through object storage.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dropzone.webhooks import WebhookEvent

ExportStatusName = Literal["PENDING", "SENT", "ACKED", "FAILED"]


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True)


class ErrorInfo(_Contract):
    """What went wrong, as stored in ``erp_export.error_json`` and shown to operators."""

    code: str
    message: str
    fields: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            data["fields"] = self.fields
        data.update(self.details)
        return data


# --- workflow -----------------------------------------------------------------


class ExportRequest(_Contract):
    """Input of ``ExportOrderWorkflow``: one approved draft for one ERP connection.

    ``draft`` is the approved draft as JSON (``dropzone.export_v1.DraftOrder``). It is validated by the
    workflow itself, so that a backend in any language that sends a bad draft
    gets a failed run naming every bad field instead of a stuck workflow task.
    ``draft_ref`` is an object-storage key holding that JSON, for drafts too
    large for a Temporal payload.
    """

    erp_connection_id: UUID
    draft: dict[str, Any] | None = None
    draft_ref: str | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ExportRequest:
        if (self.draft is None) == (self.draft_ref is None):
            raise ValueError("give exactly one of 'draft' or 'draft_ref'")
        return self


class DraftSummary(_Contract):
    """The few draft facts the workflow needs for names, search attributes and summaries."""

    draft_order_id: UUID
    org_id: UUID
    org_slug: str
    external_order_number: str
    line_count: int


class ExportResult(_Contract):
    """Result of a finished ``ExportOrderWorkflow`` run."""

    draft_order_id: UUID
    export_id: UUID | None
    attempt: int
    status: ExportStatusName
    filename: str | None = None
    erp_order_id: str | None = None
    error: ErrorInfo | None = None


class ExportState(_Contract):
    """Answer of the ``status`` query."""

    draft_order_id: UUID | None
    attempt: int
    export_id: UUID | None
    status: ExportStatusName
    filename: str | None = None
    erp_order_id: str | None = None
    last_error: ErrorInfo | None = None
    waiting_for: Literal["nothing", "delivery", "ack", "retry_signal"] = "nothing"


class RetryRequest(_Contract):
    """Signal ``retry`` and Update ``retry_export``: start a new attempt of a FAILED export."""

    reason: str | None = None
    requested_by: str | None = None


class RetryResult(_Contract):
    """Result of the ``retry_export`` Update: the new attempt, once it has been opened."""

    draft_order_id: UUID
    attempt: int
    export_id: UUID
    filename: str


class CancelRequest(_Contract):
    """Signal ``cancel``: stop waiting (for an ack or a retry) and close the run."""

    reason: str | None = None
    requested_by: str | None = None


# --- activities ---------------------------------------------------------------


class DraftRef(_Contract):
    draft_ref: str


class OpenAttemptInput(_Contract):
    erp_connection_id: UUID
    draft_order_id: UUID
    org_id: UUID
    workflow_id: str
    workflow_run_id: str
    run_seq: int


class AttemptInfo(_Contract):
    """An opened attempt: the row exists (PENDING) and its names are fixed."""

    export_id: UUID
    attempt: int
    filename: str
    storage_key: str
    dropzone_label: str
    waits_for_ack: bool
    poll_interval_seconds: int
    ack_timeout_seconds: int
    # The connection names a webhook_url: transitions are sent as status callbacks.
    # Defaulted, so results recorded in older histories still read.
    webhook: bool = False


class RenderInput(_Contract):
    export_id: UUID
    draft: dict[str, Any] | None = None
    draft_ref: str | None = None


class StoredExport(_Contract):
    export_id: UUID
    storage_key: str
    sha256: str
    size_bytes: int


class ExportRef(_Contract):
    """Names one attempt (one ``erp_export`` row); everything else is loaded by id."""

    export_id: UUID


class DeliverInput(ExportRef):
    """The deliver activity's input. ``sent_callback``: the connection has a webhook and the
    workflow lets the activity send the SENT callback itself, once the file is published
    (one try; see ``DeliveryOutcome.sent_callback``). Defaulted: older histories' inputs still read."""

    sent_callback: bool = False


class DeliveryOutcome(_Contract):
    export_id: UUID
    dropzone_path: str
    already_present: bool
    size_bytes: int
    sent_at: datetime | None = None
    # The SENT callback's try inside the activity (None: not asked for, or not tried): the
    # workflow queues the event only when this is not DELIVERED. Defaulted, like the input.
    sent_callback: WebhookDeliveryOutcome | None = None


class AckOutcome(_Contract):
    """The ERP's answer to one attempt, as recorded in the ledger.

    ``late``: the answer came after the ack timeout had failed the attempt
    (the workflow's late-ack poll); defaulted, so results recorded in older
    histories still read.
    """

    export_id: UUID
    status: Literal["ACKED", "FAILED"]
    erp_order_id: str | None = None
    error: ErrorInfo | None = None
    late: bool = False


class MarkFailedInput(_Contract):
    export_id: UUID
    error: ErrorInfo


class AttemptStatus(_Contract):
    export_id: UUID
    status: ExportStatusName


class WebhookDelivery(_Contract):
    """One status callback to send: the connection (URL and secret are loaded by id) and the event."""

    erp_connection_id: UUID
    org_id: UUID
    event: WebhookEvent
    # Tries made before this activity's attempts (a closing run's local try): counted in delivery_attempts.
    tries_before: int = 0


class WebhookGiveUp(_Contract):
    """A status callback whose retry window ran out: recorded as GAVE_UP with the last error."""

    delivery: WebhookDelivery
    reason: str


class WebhookDeliveryOutcome(_Contract):
    event_id: UUID
    status: Literal["PENDING", "DELIVERED", "GAVE_UP"]
    delivery_attempts: int
    response_status: int | None = None


# --- ack listener (workflows/ack_listener.py) ------------------------------------


class EnsureListenerInput(_Contract):
    """Start the connection's ack listener unless it runs (the export's task queue)."""

    erp_connection_id: UUID
    task_queue: str
    # The attempt that is about to wait: names the export in the activity's log lines and metrics.
    export_id: UUID | None = None


class ListenerRef(_Contract):
    workflow_id: str
    # False: this worker keeps new exports on the per-export poll (AckListenerActivities(enabled=False)).
    enabled: bool = True


class AckHandover(_Contract):
    """An ERP answer, already recorded in the ledger, handed to the export's run (the ``hand_over_ack`` Update)."""

    ack_file: str
    outcome: AckOutcome


class AckAccepted(_Contract):
    """The run took the answer (``applied``), or already had it (a handover repeated after a crash)."""

    export_id: UUID
    applied: bool


class ListenerState(_Contract):
    """What an operator sees of one connection's ack listener (query ``state``, ``dropzone acks listeners``)."""

    erp_connection_id: UUID
    poll_interval_seconds: int = 0
    listings: int = 0
    last_listing_at: datetime | None = None
    last_listing_files: int = 0
    files_seen: int = 0
    handed_over: int = 0
    recorded_without_run: int = 0  # the run had closed or moved on: the ledger holds the answer
    rejected: int = 0
    stale_tmp_removed: int = 0
    last_tmp_sweep_at: datetime | None = None
    last_error: ErrorInfo | None = None
    last_error_at: datetime | None = None
    runs: int = 1  # 1 + continue-as-new so far


class ListenerInput(_Contract):
    """Input of ``AckListenerWorkflow``: the connection, and the state carried over a continue-as-new."""

    erp_connection_id: UUID
    state: ListenerState | None = None


class ScanInput(_Contract):
    erp_connection_id: UUID
    sweep_stale_tmps: bool = False


class ScanResult(_Contract):
    """One listing of ``ack_path`` and what came of it (counts of this listing only)."""

    poll_interval_seconds: int
    listed_at: datetime
    files: int = 0
    handed_over: int = 0
    recorded_without_run: int = 0
    rejected: int = 0
    stale_tmp_removed: int = 0
    swept_tmps: bool = False
    # The dropzone could not be listed (auth, permission, network, no ack_path): why.
    error: ErrorInfo | None = None


# DeliveryOutcome names WebhookDeliveryOutcome, defined after it.
DeliveryOutcome.model_rebuild()
