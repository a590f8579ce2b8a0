"""Activities that open an attempt, render and store it, deliver it, or fail it.

Plain ``def`` activities: paramiko, boto3 and psycopg block, so the worker runs
these on its thread pool. Every one is idempotent — Temporal may run any of
them more than once — and none returns an export body or a credential.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import IO, BinaryIO

from temporalio import activity

from activities.failures import translate_errors
from dropzone import naming
from dropzone.connectors import ConnectorRegistry
from dropzone.contracts import (
    AttemptInfo,
    AttemptStatus,
    DeliverInput,
    DeliveryOutcome,
    DraftRef,
    DraftSummary,
    MarkFailedInput,
    OpenAttemptInput,
    RenderInput,
    StoredExport,
    WebhookDelivery,
    WebhookDeliveryOutcome,
)
from dropzone.errors import InvalidConfigError, InvalidDraftError
from dropzone.draft_files import MAX_DRAFT_BYTES
from dropzone.export_v1 import DraftHead, DraftOrder, stream_validated_export
from dropzone.ledger import ExportRecord, Ledger
from dropzone.object_store import ObjectStore
from dropzone.webhooks import EVENT_TYPE_FOR_STATUS, WebhookEvent, sent_event_id

# Rendered exports up to this size stay in memory; larger ones spill to a temp
# file so a 300,000-line order is never held whole several times.
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024
# Deliveries heartbeat (with bytes sent) from this long after their start, then at
# most this often; far inside the 30 s heartbeat timeout of workflows/policies.py.
FIRST_HEARTBEAT_AFTER_SECONDS = 5.0
HEARTBEAT_EVERY_SECONDS = 2.0
# Above this size a retried render_and_store checks for its object before uploading again.
SKIP_REUPLOAD_ABOVE_BYTES = 4 * 1024 * 1024


def summarize(draft: DraftOrder, line_count: int | None = None) -> DraftSummary:
    return DraftSummary(
        draft_order_id=draft.draft_order_id,
        org_id=draft.org_id,
        org_slug=draft.org_slug,
        external_order_number=draft.header.external_order_number,
        line_count=len(draft.lines) if line_count is None else line_count,
    )


def _iter_file(handle: BinaryIO) -> Iterator[bytes]:
    handle.seek(0)
    while chunk := handle.read(READ_CHUNK):
        yield chunk


class _Heartbeats:
    """Progress callback for a render or delivery: heartbeats once it has run a while.

    The heartbeat timeout (30 s) is what detects a stalled transfer; deliveries
    shorter than ``FIRST_HEARTBEAT_AFTER_SECONDS`` need none, and the SDK would
    send the very first one at once: an RPC per export that cost the Temporal
    server ~10 % of its CPU in a burst of small exports (benchmarks/).
    """

    def __init__(self) -> None:
        self._next = time.monotonic() + FIRST_HEARTBEAT_AFTER_SECONDS

    def __call__(self, sent: int) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + HEARTBEAT_EVERY_SECONDS
            activity.heartbeat(sent)


class _HashingWriter:
    """Writes rendered pieces to the spool while hashing, counting and heartbeating."""

    def __init__(self, out: IO[bytes], heartbeats: _Heartbeats) -> None:
        self._out = out
        self._heartbeats = heartbeats
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.size += len(chunk)
        self._out.write(chunk)
        self._heartbeats(self.size)


def _with_heartbeats(chunks: Iterator[bytes], heartbeats: _Heartbeats) -> Iterator[bytes]:
    sent = 0
    for chunk in chunks:
        yield chunk
        sent += len(chunk)
        heartbeats(sent)


# One try of a SENT callback made by deliver (WebhookActivities.try_with_delivery).
SentCallback = Callable[[WebhookDelivery], WebhookDeliveryOutcome | None]


class ExportActivities:
    def __init__(
        self, ledger: Ledger, store: ObjectStore, connectors: ConnectorRegistry, sent_callback: SentCallback | None = None
    ) -> None:
        self._ledger = ledger
        self._store = store
        self._connectors = connectors
        self._sent_callback = sent_callback

    def _fetch_draft_ref(self, draft_ref: str) -> bytearray:
        """The referenced draft's JSON, held once (never as one model per line)."""
        if not draft_ref.startswith("drafts/"):
            raise InvalidDraftError(f"draft_ref {draft_ref!r} is not under drafts/", fields=["draft_ref"])
        # A draft referenced by key may be large, but not larger than any door takes.
        data = self._store.get_buffer(draft_ref, max_bytes=MAX_DRAFT_BYTES)
        if data is None:
            raise InvalidDraftError(
                f"draft_ref {draft_ref!r} is larger than {MAX_DRAFT_BYTES // 2**20} MiB", fields=["draft_ref"]
            )
        return data

    def _render_into(self, out: _HashingWriter, draft: dict | None, draft_ref: str | None) -> None:
        # Every size through the one pipeline: validated and rendered a batch of
        # lines at a time, so a draft_ref is held once as bytes plus one batch of models.
        if draft is None:
            assert draft_ref is not None
            stream_validated_export(self._fetch_draft_ref(draft_ref), out.write)
        else:
            stream_validated_export(draft, out.write)

    @activity.defn
    @translate_errors
    def inspect_draft(self, ref: DraftRef) -> DraftSummary:
        head: DraftHead = stream_validated_export(self._fetch_draft_ref(ref.draft_ref))
        return summarize(head.draft, head.line_count)

    @activity.defn
    @translate_errors
    def open_attempt(self, request: OpenAttemptInput) -> AttemptInfo:
        # A deactivated connection gets no new attempt: CONNECTION_INACTIVE (permanent).
        connection = self._ledger.get_active_connection(request.erp_connection_id)
        if connection.org_id != request.org_id:
            raise InvalidConfigError(
                f"connection {connection.id} belongs to another organisation than draft "
                f"{request.draft_order_id}"
            )
        connector = self._connectors.get(connection.connector_type)
        config = connector.parse_config(connection.config)
        record = self._ledger.open_attempt(
            org_id=request.org_id,
            erp_connection_id=request.erp_connection_id,
            draft_order_id=request.draft_order_id,
            workflow_id=request.workflow_id,
            workflow_run_id=request.workflow_run_id,
            run_seq=request.run_seq,
            filename_for=lambda export_id, created_at: naming.export_filename(
                request.draft_order_id, created_at, export_id
            ),
            storage_key_for=lambda filename: naming.storage_key(request.org_id, filename),
        )
        return AttemptInfo(
            export_id=record.id,
            attempt=record.attempt,
            filename=record.filename,
            storage_key=record.export_storage_key,
            dropzone_label=connector.describe(config),
            waits_for_ack=config.ack_path is not None,
            poll_interval_seconds=config.poll_interval_seconds,
            ack_timeout_seconds=config.ack_timeout_seconds,
            webhook=config.webhook_url is not None,
        )

    @activity.defn
    @translate_errors
    def render_and_store(self, request: RenderInput) -> StoredExport:
        record = self._ledger.get_export(request.export_id)
        heartbeats = _Heartbeats()
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            rendered = _HashingWriter(spool, heartbeats)
            self._render_into(rendered, request.draft, request.draft_ref)
            sha256, size = rendered.digest.hexdigest(), rendered.size
            if not self._already_stored(record.export_storage_key, sha256, size):
                body = _with_heartbeats(_iter_file(spool), heartbeats)
                self._store.put(record.export_storage_key, body, sha256=sha256, size=size)
        self._ledger.record_stored(record.id, sha256=sha256, size_bytes=size)
        return StoredExport(
            export_id=record.id, storage_key=record.export_storage_key, sha256=sha256, size_bytes=size
        )

    def _already_stored(self, key: str, sha256: str, size: int) -> bool:
        # Rendering is deterministic, so an object already there with our hash is
        # this very attempt stored by an earlier execution. Only worth a HEAD request
        # for large bodies: putting the same small body again is as idempotent and
        # cheaper than asking first on every export.
        if size <= SKIP_REUPLOAD_ABOVE_BYTES:
            return False
        existing = self._store.head(key)
        return existing is not None and existing.sha256 == sha256

    @activity.defn
    @translate_errors
    def deliver(self, ref: DeliverInput) -> DeliveryOutcome:
        record = self._ledger.get_export(ref.export_id)
        if record.sha256 is None or record.size_bytes is None:
            raise InvalidConfigError(f"export {record.id} was never stored; cannot deliver")
        connection = self._ledger.get_connection(record.erp_connection_id)
        connector = self._connectors.get(connection.connector_type)
        config = connector.parse_config(connection.config)
        # Unique per execution, so two racing executions never share a temp file;
        # it names the attempt, so a retry can sweep what a killed one left.
        attempt = activity.info().attempt
        token = naming.execution_token(attempt, uuid.uuid4().hex[:12])
        with connector.session(config) as dropzone:
            result = dropzone.deliver(
                record.filename,
                self._store.iter_chunks(record.export_storage_key),
                size=record.size_bytes,
                sha256=record.sha256,
                token=token,
                progress=_Heartbeats(),
                attempt=attempt,
            )
        sent = self._ledger.mark_sent(record.id, dropzone_path=result.path)
        return DeliveryOutcome(
            export_id=record.id,
            dropzone_path=result.path,
            already_present=result.already_present,
            size_bytes=result.size_bytes,
            sent_at=sent.sent_at,
            sent_callback=self._send_sent_callback(sent) if ref.sent_callback else None,
        )

    def _send_sent_callback(self, sent: ExportRecord) -> WebhookDeliveryOutcome | None:
        """The SENT callback, tried once here: with a receiver that answers, the workflow
        needs no command for it (benchmarks/bench_webhooks.py). Only after the row says
        SENT, so the event never runs ahead of the ledger."""
        if self._sent_callback is None or sent.sent_at is None:
            return None
        event = WebhookEvent(
            event_id=sent_event_id(sent.id),
            type=EVENT_TYPE_FOR_STATUS["SENT"],
            draft_order_id=sent.draft_order_id,
            export_id=sent.id,
            attempt=sent.attempt,
            status="SENT",
            occurred_at=sent.sent_at,
        )
        return self._sent_callback(
            WebhookDelivery(erp_connection_id=sent.erp_connection_id, org_id=sent.org_id, event=event)
        )

    @activity.defn
    @translate_errors
    def mark_failed(self, request: MarkFailedInput) -> AttemptStatus:
        record = self._ledger.mark_failed(request.export_id, error_json=request.error.to_json())
        return AttemptStatus(export_id=record.id, status=record.status)
