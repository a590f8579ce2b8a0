"""The Python API a backend uses to start and steer exports.

    client = await connect_client(settings)
    started = await start_export(client, erp_connection_id=conn_id, draft=draft_json)
    state = await export_status(client, draft_order_id)
    attempt = await retry_export(client, draft_order_id, reason="customer fixed")  # RetryRejected says why not
    outcomes = await retry_exports(client, failed_draft_ids)   # many at once

Starting is idempotent: the workflow id is ``erp-export-<draft_order_id>``, a
second start while a run is open returns that run, and after a run has closed a
new export of the same draft happens only with ``force=True``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dropzone.contracts import (
    CancelRequest,
    ExportResult,
    ExportState,
    RetryRequest,
)
from dropzone.draft_files import MAX_DRAFT_BYTES
from dropzone.errors import ExportNotFoundError, TemporalUnavailableError
from dropzone.object_store import ObjectStore
from dropzone.settings import DEFAULT_TASK_QUEUE
from starter.draft_intake import DraftCheck, DraftInput, prepare_draft
from workflows.export_order import RETRY_REJECTED, ExportOrderWorkflow
from workflows import policies
from workflows.policies import WORKFLOW_ID_PREFIX, workflow_id_for

# Temporal's payload limit is 2 MB; stay well below it and leave room for history.
DEFAULT_INLINE_LIMIT = 256 * 1024


@dataclass(frozen=True)
class StartedExport:
    workflow_id: str
    run_id: str | None
    draft_order_id: UUID
    # False when an earlier start's run was returned instead of a new one.
    started_new: bool


# Temporal answers a start with ``started`` (false: an open run was used); temporalio 1.35
# keeps that answer on the handle it returns. Should a release drop it, a describe before
# the start tells instead (one more round trip per start).
_START_RESPONSE_KEPT = "start_workflow_response" in inspect.signature(WorkflowHandle.__init__).parameters


async def start_export(
    client: Client,
    *,
    erp_connection_id: UUID,
    draft: DraftInput,
    store: ObjectStore | None = None,
    force: bool = False,
    task_queue: str = DEFAULT_TASK_QUEUE,
    inline_limit_bytes: int = DEFAULT_INLINE_LIMIT,
    max_draft_bytes: int = MAX_DRAFT_BYTES,
    check_draft: DraftCheck | None = None,
) -> StartedExport:
    """Validate the draft, then start (or join) its export workflow.

    ``draft`` is decoded JSON, its bytes or text, a file path (``os.PathLike``)
    or a binary stream. An invalid draft raises ``InvalidDraftError`` naming
    every field before anything is written; so does one above
    ``max_draft_bytes`` (checked before it is read). Drafts larger than
    ``inline_limit_bytes`` are validated by streaming, stored in object storage
    and passed by reference (``store`` is then required), see
    starter/draft_intake.py. ``check_draft`` sees the validated draft (without
    its lines when large, in a worker thread) before anything is stored; raise
    to stop.
    """
    prepared = await asyncio.to_thread(
        prepare_draft, erp_connection_id, draft, store=store, inline_limit_bytes=inline_limit_bytes,
        max_draft_bytes=max_draft_bytes, check=check_draft,
    )
    parsed, request = prepared.draft, prepared.request
    workflow_id = workflow_id_for(parsed.draft_order_id)
    was_running = False if _START_RESPONSE_KEPT else await _is_running(client, workflow_id)
    summary = f"{parsed.header.external_order_number} · {parsed.org_slug} · {prepared.line_count} lines"
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
            # Set at the start, not only by the workflow's first upsert, so that a
            # run is findable by organisation (the HTTP API's tenancy check) from
            # its first moment.
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(policies.SA_ORG_ID, str(parsed.org_id)),
                    SearchAttributePair(policies.SA_DRAFT_ORDER_ID, str(parsed.draft_order_id)),
                ]
            ),
        )
    except WorkflowAlreadyStartedError:
        # A closed run exists and no force: the double click lands on that run.
        return StartedExport(workflow_id, None, parsed.draft_order_id, started_new=False)
    except RPCError as exc:
        raise _temporal_error(exc) from None
    response = getattr(handle, "_start_workflow_response", None)
    started_new = bool(response.started) if response is not None else not was_running
    return StartedExport(workflow_id, handle.result_run_id, parsed.draft_order_id, started_new=started_new)


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


class RetryRejected(Exception):
    """The export cannot be retried now; ``reason`` says why (still running, ACKED, cancelled, run closed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryAttemptFailed(RetryRejected):
    """The retry was accepted, but its new attempt failed before it got a number
    (its connection is unknown, inactive or another organisation's); the export
    is FAILED again and waits for the next retry."""


async def retry_export(
    client: Client, draft_order_id: UUID | str, *, reason: str | None = None, requested_by: str | None = None
) -> int:
    """The `retry_export` Update: a FAILED export starts a new attempt (new row, new file).

    Returns the new attempt's number once it has been opened. Raises
    ``RetryRejected`` when the export is not FAILED and waiting for a retry
    (the workflow's validator says why; nothing is sent) or its run has closed,
    and ``ExportNotFoundError`` when the draft has no export workflow.
    """
    handle = export_handle(client, draft_order_id)
    try:
        result = await handle.execute_update(
            ExportOrderWorkflow.retry_export, RetryRequest(reason=reason, requested_by=requested_by)
        )
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        text = getattr(cause, "message", None) or str(cause or exc)
        if isinstance(cause, ApplicationError) and cause.type != RETRY_REJECTED:
            raise RetryAttemptFailed(text) from None
        raise RetryRejected(text) from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            closed = await _closed_reason(client, draft_order_id)
            if closed is not None:
                raise RetryRejected(closed) from None
        raise _temporal_error(exc, draft_order_id) from None
    return result.attempt


async def _closed_reason(client: Client, draft_order_id: UUID | str) -> str | None:
    """Why a closed run cannot be retried; None when the run is open or there is none."""
    try:
        description = await client.get_workflow_handle(workflow_id_for(draft_order_id)).describe()
    except RPCError:
        return None
    if description.status in (None, WorkflowExecutionStatus.RUNNING):
        return None
    try:  # a closed run still answers the query (a worker replays it)
        state = await export_handle(client, draft_order_id).query(ExportOrderWorkflow.status)
    except (RPCError, WorkflowQueryFailedError):
        state = None
    if state is not None and state.status != "FAILED":
        order = f" (ERP order {state.erp_order_id})" if state.erp_order_id else ""
        return f"the export is {state.status}, not FAILED{order}, and its run has closed"
    return (
        f"the export's run has closed ({description.status.name}) without a retry: "
        "export the draft again to send it"
    )


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


# --- many exports at once (operators' bulk retry) ----------------------------------

RetryVerdict = Literal["retried", "would_retry", "skipped", "error"]
BULK_SIGNAL_CONCURRENCY = 8


@dataclass(frozen=True)
class RetryOutcome:
    """What a bulk retry did with one draft's export workflow."""

    draft_order_id: UUID
    workflow_id: str
    verdict: RetryVerdict
    detail: str = ""
    attempt: int | None = None  # the new attempt's number, when retried


async def failed_running_drafts(client: Client, org_id: UUID) -> list[UUID]:
    """Drafts of the org whose export workflow is running and FAILED, per Temporal visibility.

    Finds the runs that failed before an attempt row existed (unknown or
    inactive connection), which the ledger cannot show. Visibility lags a
    little behind the runs: the ledger stays the source for everything else.
    """
    query = f'OrgId="{org_id}" AND ExportStatus="FAILED" AND ExecutionStatus="Running"'
    drafts: list[UUID] = []
    try:
        async for execution in client.list_workflows(query):
            if execution.id.startswith(WORKFLOW_ID_PREFIX):
                drafts.append(UUID(execution.id.removeprefix(WORKFLOW_ID_PREFIX)))
    except RPCError as exc:
        raise _temporal_error(exc) from None
    return drafts


async def retry_exports(
    client: Client,
    draft_order_ids: Sequence[UUID],
    *,
    reason: str | None = None,
    requested_by: str | None = None,
    dry_run: bool = False,
    on_outcome: Callable[[RetryOutcome], None] | None = None,
) -> list[RetryOutcome]:
    """Retry (the `retry_export` Update) the export of every draft, a few at a time.

    Only a running workflow can take the retry: closed ones (the retry window
    ran out, cancelled, or never started) are skipped and reported, so an
    operator can export them again on purpose. ``dry_run`` looks without
    signalling. ``on_outcome`` is called as each draft is done (progress bars).
    """
    limit = asyncio.Semaphore(BULK_SIGNAL_CONCURRENCY)

    async def one(draft_order_id: UUID) -> RetryOutcome:
        async with limit:
            outcome = await _retry_one(client, draft_order_id, reason, requested_by, dry_run)
        if on_outcome is not None:
            on_outcome(outcome)
        return outcome

    return list(await asyncio.gather(*(one(d) for d in draft_order_ids)))


async def _retry_one(
    client: Client, draft_order_id: UUID, reason: str | None, requested_by: str | None, dry_run: bool
) -> RetryOutcome:
    workflow_id = workflow_id_for(draft_order_id)
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return RetryOutcome(draft_order_id, workflow_id, "skipped", "no workflow found")
        return RetryOutcome(draft_order_id, workflow_id, "error", f"Temporal refused the request: {exc.message}")
    if description.status != WorkflowExecutionStatus.RUNNING:
        state = description.status.name if description.status else "UNKNOWN"
        return RetryOutcome(draft_order_id, workflow_id, "skipped", f"workflow is closed ({state})")
    if dry_run:
        return RetryOutcome(draft_order_id, workflow_id, "would_retry")
    try:
        attempt = await retry_export(client, draft_order_id, reason=reason, requested_by=requested_by)
    except RetryAttemptFailed as exc:  # retried, and the new attempt failed at once again
        return RetryOutcome(draft_order_id, workflow_id, "retried", exc.reason)
    except RetryRejected as exc:  # not FAILED any more (a late ack, another retry), or closed meanwhile
        return RetryOutcome(draft_order_id, workflow_id, "skipped", exc.reason)
    except ExportNotFoundError:  # closed between describe and update
        return RetryOutcome(draft_order_id, workflow_id, "skipped", "workflow closed meanwhile")
    except TemporalUnavailableError as exc:
        return RetryOutcome(draft_order_id, workflow_id, "error", exc.message)
    return RetryOutcome(draft_order_id, workflow_id, "retried", attempt=attempt)
