"""Activities that open an attempt, render and store it, deliver it, or fail it.

Plain ``def`` activities: paramiko, boto3 and psycopg block, so the worker runs
these on its thread pool. Every one is idempotent — Temporal may run any of
them more than once — and none returns an export body or a credential.
"""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from temporalio import activity

from activities.failures import translate_errors
from dropzone import naming
from dropzone.connectors import ConnectorRegistry
from dropzone.contracts import (
    AttemptInfo,
    AttemptStatus,
    DeliveryOutcome,
    DraftRef,
    DraftSummary,
    ExportRef,
    MarkFailedInput,
    OpenAttemptInput,
    RenderInput,
    StoredExport,
)
from dropzone.errors import InvalidConfigError, InvalidDraftError
from dropzone.export_v1 import DraftOrder, iter_render_export, validate_draft
from dropzone.ledger import Ledger
from dropzone.transports.object_storage import ObjectStore

# Rendered exports up to this size stay in memory; larger ones spill to a temp
# file so a 300,000-line order is never held whole several times.
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024
# A draft referenced by key may be large, but not unbounded.
MAX_DRAFT_REF_BYTES = 512 * 1024 * 1024


def summarize(draft: DraftOrder) -> DraftSummary:
    return DraftSummary(
        draft_order_id=draft.draft_order_id,
        org_id=draft.org_id,
        org_slug=draft.org_slug,
        external_order_number=draft.header.external_order_number,
        line_count=len(draft.lines),
    )


def _iter_file(handle: BinaryIO) -> Iterator[bytes]:
    handle.seek(0)
    while chunk := handle.read(READ_CHUNK):
        yield chunk


class ExportActivities:
    def __init__(self, ledger: Ledger, store: ObjectStore, connectors: ConnectorRegistry) -> None:
        self._ledger = ledger
        self._store = store
        self._connectors = connectors

    def _load_draft(self, draft: dict | None, draft_ref: str | None) -> DraftOrder:
        if draft is not None:
            return validate_draft(draft)
        assert draft_ref is not None
        if not draft_ref.startswith("drafts/"):
            raise InvalidDraftError(f"draft_ref {draft_ref!r} is not under drafts/", fields=["draft_ref"])
        return validate_draft(self._store.get_bytes(draft_ref, max_bytes=MAX_DRAFT_REF_BYTES))

    @activity.defn
    @translate_errors
    def inspect_draft(self, ref: DraftRef) -> DraftSummary:
        return summarize(self._load_draft(None, ref.draft_ref))

    @activity.defn
    @translate_errors
    def open_attempt(self, request: OpenAttemptInput) -> AttemptInfo:
        connection = self._ledger.get_connection(request.erp_connection_id)
        if not connection.active:
            raise InvalidConfigError(f"connection {connection.id} is inactive")
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
        )

    @activity.defn
    @translate_errors
    def render_and_store(self, request: RenderInput) -> StoredExport:
        record = self._ledger.get_export(request.export_id)
        draft = self._load_draft(request.draft, request.draft_ref)
        digest = hashlib.sha256()
        size = 0
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            for chunk in iter_render_export(draft):
                digest.update(chunk)
                size += len(chunk)
                spool.write(chunk)
            sha256 = digest.hexdigest()
            existing = self._store.head(record.export_storage_key)
            # Rendering is deterministic, so an object already there with our hash
            # is this very attempt stored by an earlier execution.
            if existing is None or existing.sha256 != sha256:
                self._store.put(record.export_storage_key, _iter_file(spool), sha256=sha256, size=size)
        self._ledger.record_stored(record.id, sha256=sha256, size_bytes=size)
        return StoredExport(
            export_id=record.id, storage_key=record.export_storage_key, sha256=sha256, size_bytes=size
        )

    @activity.defn
    @translate_errors
    def deliver(self, ref: ExportRef) -> DeliveryOutcome:
        record = self._ledger.get_export(ref.export_id)
        if record.sha256 is None or record.size_bytes is None:
            raise InvalidConfigError(f"export {record.id} was never stored; cannot deliver")
        connection = self._ledger.get_connection(record.erp_connection_id)
        connector = self._connectors.get(connection.connector_type)
        config = connector.parse_config(connection.config)
        # Unique per execution, so two racing executions never share a temp file.
        token = uuid.uuid4().hex[:12]
        result = connector.export(
            config,
            filename=record.filename,
            chunks=self._store.iter_chunks(record.export_storage_key),
            size=record.size_bytes,
            sha256=record.sha256,
            token=token,
            progress=lambda sent: activity.heartbeat(sent),
        )
        sent = self._ledger.mark_sent(record.id, dropzone_path=result.path)
        return DeliveryOutcome(
            export_id=record.id,
            dropzone_path=result.path,
            already_present=result.already_present,
            size_bytes=result.size_bytes,
            sent_at=sent.sent_at,
        )

    @activity.defn
    @translate_errors
    def mark_failed(self, request: MarkFailedInput) -> AttemptStatus:
        record = self._ledger.mark_failed(request.export_id, error_json=request.error.to_json())
        return AttemptStatus(export_id=record.id, status=record.status)
