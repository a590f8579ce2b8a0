"""The bare workflow: ExportOrderWorkflow's happy path (no ack) with activities that do nothing.

The end-to-end benchmark compares the real pipeline against this: the same
input (with the same 500-line draft payload), the same in-workflow draft
validation, the same search-attribute upserts and current-details updates,
the same three activities in the same order with the same options, run by a
worker configured the same way (plain ``def`` activities on a thread pool of
the same size). Whatever it achieves is what Temporal, the SDK and this
machine allow; the ratio shows what the real activities cost on top.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from temporalio import activity, workflow
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from activities.exports import summarize
    from dropzone.contracts import (
        AttemptInfo,
        DeliveryOutcome,
        ExportRef,
        ExportRequest,
        ExportResult,
        OpenAttemptInput,
        RenderInput,
        StoredExport,
    )
    from dropzone.export_v1 import validate_draft

from dropzone.settings import load_settings
from workflows import policies

WORKFLOW_TYPE = "BareExportWorkflow"


@activity.defn(name="bare_open_attempt")
def bare_open_attempt(request: OpenAttemptInput) -> AttemptInfo:
    return AttemptInfo(
        export_id=uuid.uuid4(),
        attempt=1,
        filename=f"sales_order_{str(request.draft_order_id)[:8]}_20250101_000000_00000000.json",
        storage_key=f"exports/{request.org_id}/bare.json",
        dropzone_label="bare://nowhere",
        waits_for_ack=False,
        poll_interval_seconds=60,
        ack_timeout_seconds=604800,
    )


@activity.defn(name="bare_render_and_store")
def bare_render_and_store(request: RenderInput) -> StoredExport:
    return StoredExport(export_id=request.export_id, storage_key="exports/bare/bare.json", sha256="0" * 64, size_bytes=0)


@activity.defn(name="bare_deliver")
def bare_deliver(ref: ExportRef) -> DeliveryOutcome:
    return DeliveryOutcome(
        export_id=ref.export_id,
        dropzone_path="/nowhere/bare.json",
        already_present=False,
        size_bytes=0,
        sent_at=datetime.now(timezone.utc),
    )


@workflow.defn(name=WORKFLOW_TYPE)
class BareExportWorkflow:
    @workflow.run
    async def run(self, request: ExportRequest) -> ExportResult:
        assert request.draft is not None
        summary = summarize(validate_draft(request.draft))
        workflow.upsert_search_attributes(
            [
                policies.SA_ORG_ID.value_set(str(summary.org_id)),
                policies.SA_DRAFT_ORDER_ID.value_set(str(summary.draft_order_id)),
            ]
        )
        workflow.upsert_search_attributes([policies.SA_EXPORT_STATUS.value_set("PENDING")])
        info = workflow.info()
        attempt = await workflow.execute_activity(
            bare_open_attempt,
            OpenAttemptInput(
                erp_connection_id=request.erp_connection_id,
                draft_order_id=summary.draft_order_id,
                org_id=summary.org_id,
                workflow_id=info.workflow_id,
                workflow_run_id=info.run_id,
                run_seq=1,
            ),
            start_to_close_timeout=policies.DEFAULT_POLICIES.ledger_timeout,
            schedule_to_close_timeout=policies.DEFAULT_POLICIES.transient_give_up_after,
            retry_policy=policies.DEFAULT_POLICIES.ledger_retry,
            summary="open attempt",
        )
        workflow.set_current_details(f"attempt {attempt.attempt}: rendering {attempt.filename}")
        await workflow.execute_activity(
            bare_render_and_store,
            RenderInput(export_id=attempt.export_id, draft=request.draft, draft_ref=request.draft_ref),
            start_to_close_timeout=policies.DEFAULT_POLICIES.render_timeout,
            schedule_to_close_timeout=policies.DEFAULT_POLICIES.transient_give_up_after,
            retry_policy=policies.DEFAULT_POLICIES.ledger_retry,
            summary=f"render and store {attempt.storage_key}",
        )
        workflow.set_current_details(f"attempt {attempt.attempt}: delivering to {attempt.dropzone_label}")
        await workflow.execute_activity(
            bare_deliver,
            ExportRef(export_id=attempt.export_id),
            start_to_close_timeout=policies.DEFAULT_POLICIES.deliver_timeout,
            heartbeat_timeout=policies.DEFAULT_POLICIES.deliver_heartbeat_timeout,
            schedule_to_close_timeout=policies.DEFAULT_POLICIES.transient_give_up_after,
            retry_policy=policies.DEFAULT_POLICIES.deliver_retry,
            summary=f"deliver {attempt.filename} to {attempt.dropzone_label}",
        )
        workflow.upsert_search_attributes([policies.SA_EXPORT_STATUS.value_set("SENT")])
        workflow.set_current_details(f"attempt {attempt.attempt}: SENT (no ack path configured)")
        return ExportResult(
            draft_order_id=summary.draft_order_id,
            export_id=attempt.export_id,
            attempt=attempt.attempt,
            status="SENT",
            filename=attempt.filename,
            erp_order_id=None,
            error=None,
        )


async def _serve(address: str, task_queue: str, max_concurrent_activities: int) -> None:
    from worker import connect_client

    # Connected (TLS, credentials, data converter) exactly like the real worker.
    client = await connect_client(load_settings(temporal_address=address))
    with ThreadPoolExecutor(max_workers=max_concurrent_activities) as executor:
        worker = Worker(
            client,
            task_queue=task_queue,
            workflows=[BareExportWorkflow],
            activities=[bare_open_attempt, bare_render_and_store, bare_deliver],
            activity_executor=executor,
            max_concurrent_activities=max_concurrent_activities,
        )
        async with worker:
            await asyncio.Event().wait()  # until the benchmark terminates this process


def main() -> None:
    """A bare worker process, configured from the same DROPZONE_* variables as the real one."""
    try:
        asyncio.run(
            _serve(
                os.environ["DROPZONE_TEMPORAL_ADDRESS"],
                os.environ["DROPZONE_TASK_QUEUE"],
                int(os.environ.get("DROPZONE_MAX_CONCURRENT_ACTIVITIES", "32")),
            )
        )
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
