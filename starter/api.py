"""The Python API a backend uses to start and steer exports.

    client = await connect_client(settings)
    started = await start_export(client, erp_connection_id=conn_id, draft=draft_json)
    state = await export_status(client, draft_order_id)
    await retry_export(client, draft_order_id)

Starting is idempotent: the workflow id is ``erp-export-<draft_order_id>``, a
second start while a run is open returns that run, and after a run has closed a
new export of the same draft happens only with ``force=True``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dropzone.contracts import (
    CancelRequest,
    ExportRequest,
    ExportResult,
    ExportState,
    RetryRequest,
)
from dropzone.errors import ExportNotFoundError, TemporalUnavailableError
from dropzone.export_v1 import DraftOrder, validate_draft
from dropzone.transports.object_storage import ObjectStore
from workflows.export_order import ExportOrderWorkflow
from workflows.policies import TASK_QUEUE, workflow_id_for

# Temporal's payload limit is 2 MB; stay well below it and leave room for history.
DEFAULT_INLINE_LIMIT = 256 * 1024


@dataclass(frozen=True)
class StartedExport:
    workflow_id: str
    run_id: str | None
    draft_order_id: UUID
    # False when an earlier start's run was returned instead of a new one
    # (informational: decided by a describe just before the start).
    started_new: bool


def draft_ref_key(draft: DraftOrder, body: bytes) -> str:
    return f"drafts/{draft.org_id}/{draft.draft_order_id}/{hashlib.sha256(body).hexdigest()[:16]}.json"


async def start_export(
    client: Client,
    *,
    erp_connection_id: UUID,
    draft: dict[str, Any] | bytes | str,
    store: ObjectStore | None = None,
    force: bool = False,
    task_queue: str = TASK_QUEUE,
    inline_limit_bytes: int = DEFAULT_INLINE_LIMIT,
) -> StartedExport:
    """Validate the draft, then start (or join) its export workflow.

    An invalid draft raises ``InvalidDraftError`` naming every field before
    anything is written. Drafts larger than ``inline_limit_bytes`` are stored
    in object storage and passed by reference (``store`` is then required).
    """
    parsed = validate_draft(draft)
    body = draft if isinstance(draft, bytes) else (draft.encode() if isinstance(draft, str) else None)
    draft_json: dict[str, Any] = json.loads(body) if body is not None else dict(draft)  # type: ignore[arg-type]
    body = body if body is not None else json.dumps(draft_json, separators=(",", ":")).encode()
    if len(body) > inline_limit_bytes:
        if store is None:
            raise ValueError("draft is too large to travel inline: pass an ObjectStore to start_export")
        key = draft_ref_key(parsed, body)
        store.put(key, body, sha256=hashlib.sha256(body).hexdigest(), size=len(body))
        request = ExportRequest(erp_connection_id=erp_connection_id, draft_ref=key)
    else:
        request = ExportRequest(erp_connection_id=erp_connection_id, draft=draft_json)

    workflow_id = workflow_id_for(parsed.draft_order_id)
    was_running = await _is_running(client, workflow_id)
    summary = f"{parsed.header.external_order_number} · {parsed.org_slug} · {len(parsed.lines)} lines"
    try:
        handle = await client.start_workflow(
            ExportOrderWorkflow.run,
            request,
            id=workflow_id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=(
                WorkflowIDReusePolicy.ALLOW_DUPLICATE if force else WorkflowIDReusePolicy.REJECT_DUPLICATE
            ),
            static_summary=summary,
            static_details=f"draft {parsed.draft_order_id} for connection {erp_connection_id}",
        )
    except WorkflowAlreadyStartedError:
        # A closed run exists and no force: the double click lands on that run.
        return StartedExport(workflow_id, None, parsed.draft_order_id, started_new=False)
    except RPCError as exc:
        raise _temporal_error(exc) from None
    return StartedExport(workflow_id, handle.result_run_id, parsed.draft_order_id, started_new=not was_running)


def export_handle(client: Client, draft_order_id: UUID | str) -> WorkflowHandle[Any, ExportResult]:
    return client.get_workflow_handle_for(ExportOrderWorkflow.run, workflow_id_for(draft_order_id))


async def export_status(client: Client, draft_order_id: UUID | str) -> ExportState:
    """The `status` query of the latest run for this draft."""
    handle = export_handle(client, draft_order_id)
    try:
        return await handle.query(ExportOrderWorkflow.status)
    except RPCError as exc:
        raise _temporal_error(exc, draft_order_id) from None


async def wait_for_result(client: Client, draft_order_id: UUID | str) -> ExportResult:
    handle = export_handle(client, draft_order_id)
    return await handle.result()


async def _is_running(client: Client, workflow_id: str) -> bool:
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise _temporal_error(exc) from None
    return description.status == WorkflowExecutionStatus.RUNNING


async def retry_export(
    client: Client, draft_order_id: UUID | str, *, reason: str | None = None, requested_by: str | None = None
) -> None:
    """Signal `retry`: a FAILED export starts a new attempt (new row, new file)."""
    try:
        await export_handle(client, draft_order_id).signal(
            ExportOrderWorkflow.retry, RetryRequest(reason=reason, requested_by=requested_by)
        )
    except RPCError as exc:
        raise _temporal_error(exc, draft_order_id) from None


async def cancel_export(client: Client, draft_order_id: UUID | str, *, reason: str | None = None) -> None:
    try:
        await export_handle(client, draft_order_id).signal(ExportOrderWorkflow.cancel, CancelRequest(reason=reason))
    except RPCError as exc:
        raise _temporal_error(exc, draft_order_id) from None


def _temporal_error(exc: RPCError, draft_order_id: UUID | str | None = None) -> Exception:
    if exc.status == RPCStatusCode.NOT_FOUND and draft_order_id is not None:
        return ExportNotFoundError(f"no export workflow for draft {draft_order_id}")
    if exc.status == RPCStatusCode.FAILED_PRECONDITION and draft_order_id is not None:
        return ExportNotFoundError(f"the export of draft {draft_order_id} is not running (it has finished)")
    return TemporalUnavailableError(f"Temporal refused the request: {exc.message}")
