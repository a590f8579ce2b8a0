"""ExportOrderWorkflow: one approved draft, delivered once per attempt, until ACKED.

Deterministic orchestration only: no I/O, no clock, no randomness. Every side
effect is an activity; the ledger row of each attempt is the durable record an
operator reads, the workflow state is what the `status` query answers.

A FAILED attempt waits for an operator's retry (``workflows/retry_wait.py``,
which also keeps looking for a late ack after ACK_TIMEOUT). Two ways to ask:

- the ``retry`` signal (kept for existing callers): ignored unless the export
  is FAILED and waiting for a retry, and the caller is told nothing;
- the ``retry_export`` Update (a signal and an update cannot share a name): its
  validator rejects the request, saying why, unless the export is FAILED and
  waiting; accepted, it returns the new attempt (``RetryResult``) once that
  attempt has been opened. It issues the same commands as the signal, so it
  needs no patch.

Status callbacks (``workflows/webhook_queue.py``): when the connection names a
webhook, every transition (SENT, ACKED, FAILED, a retry starting) is queued and
sent in order in the background; the run waits for the queue before it closes.
Guarded by ``workflow.patched(WEBHOOK_PATCH)``.

The ack wait: new runs wait for their connection's ack listener to hand the
ERP's answer over (``workflows/ack_wait.py``, ``workflow.patched(ACK_LISTENER_PATCH)``);
runs that were already waiting keep their per-export poll (``poll_ack``).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from uuid import UUID

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    TimeoutError,
    TimeoutType,
)

with workflow.unsafe.imports_passed_through():
    from activities.acks import AckActivities
    from activities.exports import ExportActivities, summarize
    from dropzone.contracts import (
        AckOutcome,
        AttemptInfo,
        CancelRequest,
        DeliverInput,
        DeliveryOutcome,
        DraftRef,
        DraftSummary,
        ErrorInfo,
        ExportRef,
        ExportRequest,
        ExportResult,
        ExportState,
        ExportStatusName,
        MarkFailedInput,
        OpenAttemptInput,
        RenderInput,
        RetryRequest,
        RetryResult,
    )
    from dropzone.errors import ACK_TIMEOUT, RETRY_REJECTED, AckNotYetAvailable, DropzoneError
    from dropzone.export_v1 import validate_draft
    from dropzone.webhooks import EVENT_TYPE_FOR_STATUS, WebhookEvent

    # Passed through the sandbox: the worker's Policies, by task queue (policies.current).
    from workflows import policies

from workflows.ack_wait import ACK_LISTENER_PATCH, ListenerWait
from workflows.retry_wait import LATE_ACK_PATCH, error_info_from
from workflows.webhook_queue import WEBHOOK_PATCH, WebhookQueue

__all__ = ["ACK_LISTENER_PATCH", "LATE_ACK_PATCH", "RETRY_REJECTED", "WEBHOOK_PATCH", "ExportOrderWorkflow", "error_info_from"]


@workflow.defn(name=policies.WORKFLOW_TYPE)
class ExportOrderWorkflow(ListenerWait):
    def __init__(self) -> None:
        # The worker's timeouts and retry policies (the defaults when it gave none).
        self._policies = policies.current()
        self._request: ExportRequest | None = None
        self._summary: DraftSummary | None = None
        self._attempt: AttemptInfo | None = None
        self._status: ExportStatusName = "PENDING"
        self._erp_order_id: str | None = None
        self._last_error: ErrorInfo | None = None
        self._waiting_for: str = "nothing"
        self._retry_requested = False
        self._cancel_requested = False
        self._run_seq = 0
        # run_seq whose open_attempt has finished, and the one that opened self._attempt.
        self._opened_seq = 0
        self._attempt_seq = 0
        self._closing = False
        self._webhooks = WebhookQueue(self._policies)
        # Answers handed over by the ack listener, by export id; the attempt that waits for one.
        self._handed: dict[UUID, AckOutcome] = {}
        self._listening_to: UUID | None = None

    @workflow.run
    async def run(self, request: ExportRequest) -> ExportResult:
        self._request = request
        self._summary = await self._summarize(request)
        workflow.upsert_search_attributes(
            [
                policies.SA_ORG_ID.value_set(str(self._summary.org_id)),
                policies.SA_DRAFT_ORDER_ID.value_set(str(self._summary.draft_order_id)),
            ]
        )
        while True:
            await self._run_attempt(request)
            if self._status != "FAILED" or self._cancel_requested:
                break
            self._waiting_for = "retry_signal"
            if not await self._wait_for_retry():
                break
            self._retry_requested = False
        return await self._close()

    async def _close(self) -> ExportResult:
        """The result, once every status callback is out and no Update is left waiting."""
        self._closing = True
        self._webhooks.closing()
        if not self._webhooks.idle:
            self._details(f"{self._status}; delivering {len(self._webhooks)} status callback(s) before closing")
            await self._webhooks.drained()
        if not workflow.all_handlers_finished():
            await workflow.wait_condition(workflow.all_handlers_finished)
        return self._result()

    # --- signals, update and query ---------------------------------------------

    @workflow.signal
    def retry(self, request: RetryRequest) -> None:
        # Only a FAILED export can be retried; a retry of a healthy one is ignored
        # so that a double click never produces a second file.
        if self._status == "FAILED" and self._waiting_for == "retry_signal":
            self._retry_requested = True

    @workflow.update(name="retry_export")
    async def retry_export(self, request: RetryRequest) -> RetryResult:
        """Start a new attempt of a FAILED export; returns it once opened."""
        before = self._run_seq
        self._retry_requested = True
        await workflow.wait_condition(lambda: self._opened_seq > before or self._closing)
        if self._opened_seq <= before:  # a cancel or a late ack closed the run first
            raise ApplicationError(
                f"the export was not retried: the run closed first ({self._status})", type=RETRY_REJECTED
            )
        if self._attempt_seq != self._opened_seq or self._attempt is None or self._summary is None:
            error = self._last_error or ErrorInfo(code="ACTIVITY_FAILED", message="unknown")
            raise ApplicationError(f"the new attempt could not be opened: {error.message}", type=error.code)
        return RetryResult(
            draft_order_id=self._summary.draft_order_id,
            attempt=self._attempt.attempt,
            export_id=self._attempt.export_id,
            filename=self._attempt.filename,
        )

    @retry_export.validator
    def _validate_retry(self, request: RetryRequest) -> None:
        reason = self._why_not_retryable()
        if reason is not None:
            raise ApplicationError(reason, type=RETRY_REJECTED, non_retryable=True)

    def _why_not_retryable(self) -> str | None:
        if self._cancel_requested:
            return "the export was cancelled"
        if self._retry_requested:
            return "the export is being retried already (a retry was requested and is starting)"
        if self._status == "ACKED":
            return f"the export is ACKED, not FAILED (ERP order {self._erp_order_id}): the ERP has the order"
        if self._status == "FAILED" and self._waiting_for == "retry_signal":
            if self._closing:  # the retry window ran out; only status callbacks are left to send
                return "the export is FAILED and its retry window is over: export the draft again to send it"
            return None
        if self._status == "SENT" and self._waiting_for == "nothing":
            return "the export is SENT, not FAILED, and no ack is expected: nothing to retry"
        attempt = self._attempt.attempt if self._attempt else 1
        return f"the export is {self._status}, not FAILED: still running (attempt {attempt}, waiting for {self._waiting_for})"

    @workflow.signal
    def cancel(self, request: CancelRequest) -> None:
        self._cancel_requested = True

    @workflow.query
    def status(self) -> ExportState:
        return ExportState(
            draft_order_id=self._summary.draft_order_id if self._summary else None,
            attempt=self._attempt.attempt if self._attempt else 0,
            export_id=self._attempt.export_id if self._attempt else None,
            status=self._status,
            filename=self._attempt.filename if self._attempt else None,
            erp_order_id=self._erp_order_id,
            last_error=self._last_error,
            waiting_for=self._waiting_for,  # type: ignore[arg-type]
        )

    # --- steps ---------------------------------------------------------------

    async def _summarize(self, request: ExportRequest) -> DraftSummary:
        if request.draft is not None:
            try:
                return summarize(validate_draft(request.draft))
            except DropzoneError as exc:
                fields = getattr(exc, "fields", [])
                raise ApplicationError(exc.message, {"fields": fields}, type=exc.code, non_retryable=True) from None
        assert request.draft_ref is not None
        return await workflow.execute_activity_method(
            ExportActivities.inspect_draft,
            DraftRef(draft_ref=request.draft_ref),
            start_to_close_timeout=self._policies.render_timeout,
            schedule_to_close_timeout=self._policies.transient_give_up_after,
            retry_policy=self._policies.ledger_retry,
        )

    async def _run_attempt(self, request: ExportRequest) -> None:
        assert self._summary is not None
        self._run_seq += 1
        self._erp_order_id = None
        self._set_status("PENDING")
        info = workflow.info()
        try:
            self._attempt = await workflow.execute_activity_method(
                ExportActivities.open_attempt,
                OpenAttemptInput(
                    erp_connection_id=request.erp_connection_id,
                    draft_order_id=self._summary.draft_order_id,
                    org_id=self._summary.org_id,
                    workflow_id=info.workflow_id,
                    workflow_run_id=info.run_id,
                    run_seq=self._run_seq,
                ),
                start_to_close_timeout=self._policies.ledger_timeout,
                schedule_to_close_timeout=self._policies.transient_give_up_after,
                retry_policy=self._policies.ledger_retry,
                summary="open attempt",
            )
        except ActivityError as err:
            # No row could be opened (unknown connection, bad config): nothing to mark.
            self._opened_seq = self._run_seq
            self._fail(error_info_from(err))
            return
        self._opened_seq = self._attempt_seq = self._run_seq
        attempt = self._attempt
        if self._run_seq > 1:
            self._emit("PENDING")  # a retry started
        try:
            self._waiting_for = "delivery"
            self._details(f"attempt {attempt.attempt}: rendering {attempt.filename}")
            await workflow.execute_activity_method(
                ExportActivities.render_and_store,
                RenderInput(export_id=attempt.export_id, draft=request.draft, draft_ref=request.draft_ref),
                start_to_close_timeout=self._policies.render_timeout,
                heartbeat_timeout=self._policies.render_heartbeat_timeout,
                schedule_to_close_timeout=self._policies.transient_give_up_after,
                retry_policy=self._policies.ledger_retry,
                summary=f"render and store {attempt.storage_key}",
            )
            self._details(f"attempt {attempt.attempt}: delivering to {attempt.dropzone_label}")
            with_callback = attempt.webhook and self._policies.webhook_sent_with_delivery
            delivered: DeliveryOutcome = await workflow.execute_activity_method(
                ExportActivities.deliver,
                DeliverInput(export_id=attempt.export_id, sent_callback=with_callback),
                start_to_close_timeout=self._policies.deliver_timeout,
                heartbeat_timeout=self._policies.deliver_heartbeat_timeout,
                schedule_to_close_timeout=self._policies.transient_give_up_after,
                retry_policy=self._policies.deliver_retry,
                summary=f"deliver {attempt.filename} to {attempt.dropzone_label}",
            )
            self._set_status("SENT")
            self._emit("SENT", delivered)
            if not attempt.waits_for_ack:
                self._waiting_for = "nothing"
                self._details(f"attempt {attempt.attempt}: SENT (no ack path configured)")
                return
            outcome = await self._await_ack(attempt)
        except ActivityError as err:
            await self._mark_failed(attempt, self._ack_error(err))
            return
        if outcome is None:  # cancelled while waiting
            return
        self._waiting_for = "nothing"
        if outcome.status == "ACKED":
            self._erp_order_id = outcome.erp_order_id
            self._last_error = None
            self._set_status("ACKED")
            self._emit("ACKED")
            self._details(f"attempt {attempt.attempt}: ACKED as {outcome.erp_order_id}")
        else:
            self._fail(outcome.error or ErrorInfo(code="ERP_REJECTED", message="rejected by the ERP"))
            self._emit("FAILED")

    async def _await_ack(self, attempt: AttemptInfo) -> AckOutcome | None:
        if self._policies.ack_listener and workflow.patched(ACK_LISTENER_PATCH):
            listener = await self._listener_ref(attempt)
            if listener.enabled:
                return await self._await_handed_ack(attempt, listener.workflow_id)
        self._waiting_for = "ack"
        self._details(
            f"attempt {attempt.attempt}: waiting for ack_{attempt.filename} since "
            f"{workflow.now():%Y-%m-%d %H:%M:%S} UTC, polling every {attempt.poll_interval_seconds} s"
        )
        poll = asyncio.ensure_future(
            workflow.execute_activity_method(
                AckActivities.poll_ack,
                ExportRef(export_id=attempt.export_id),
                start_to_close_timeout=self._policies.ack_poll_timeout,
                schedule_to_close_timeout=timedelta(seconds=attempt.ack_timeout_seconds),
                retry_policy=policies.ack_poll_retry(attempt.poll_interval_seconds),
                summary=f"wait for ack_{attempt.filename}",
            )
        )
        await workflow.wait_condition(lambda: poll.done() or self._cancel_requested)
        if not poll.done():
            poll.cancel()
            self._waiting_for = "nothing"
            self._details(f"attempt {attempt.attempt}: cancelled while waiting for the ack")
            return None
        return poll.result()

    def _ack_error(self, err: ActivityError) -> ErrorInfo:
        # The poll's schedule-to-close timeout is the ack timeout. When the next
        # retry would not fit, Temporal fails the activity with the last attempt's
        # ACK_PENDING rather than a timeout; both mean the ERP never answered.
        cause = err.cause
        timed_out = isinstance(cause, TimeoutError) and cause.type == TimeoutType.SCHEDULE_TO_CLOSE
        still_pending = isinstance(cause, ApplicationError) and cause.type == AckNotYetAvailable.code
        if self._waiting_for == "ack" and (timed_out or still_pending):
            return ErrorInfo(code=ACK_TIMEOUT, message="no ack or error file arrived within the ack timeout")
        return error_info_from(err)

    async def _mark_failed(self, attempt: AttemptInfo, error: ErrorInfo) -> None:
        await workflow.execute_activity_method(
            ExportActivities.mark_failed,
            MarkFailedInput(export_id=attempt.export_id, error=error),
            start_to_close_timeout=self._policies.ledger_timeout,
            retry_policy=self._policies.ledger_retry,
            summary="record failure",
        )
        self._fail(error)
        self._emit("FAILED")

    # --- state ---------------------------------------------------------------

    def _fail(self, error: ErrorInfo) -> None:
        self._last_error = error
        self._set_status("FAILED")

    def _set_status(self, status: ExportStatusName) -> None:
        self._status = status
        workflow.upsert_search_attributes([policies.SA_EXPORT_STATUS.value_set(status)])

    def _emit(self, status: ExportStatusName, delivered: DeliveryOutcome | None = None) -> None:
        """Queue the status callback of a transition of the current attempt (if it has a webhook).

        ``delivered``: deliver's outcome, with its own try of the SENT callback (if it has a webhook).
        Delivered: nothing left to do, no patch, no command. Not: the queue sends the same event (id
        and time), counting that try. Older histories carry no try: they replay through the queue."""
        attempt, summary, request = self._attempt, self._summary, self._request
        if attempt is None or not attempt.webhook or summary is None or request is None:
            return
        tried = delivered.sent_callback if delivered is not None else None
        if tried is not None and tried.status == "DELIVERED":
            return
        # Only runs whose connection has a webhook issue the new commands.
        if not workflow.patched(WEBHOOK_PATCH):
            return
        event = WebhookEvent(
            event_id=tried.event_id if tried else workflow.uuid4(),  # deterministic: the same id on replay
            type=EVENT_TYPE_FOR_STATUS[status],
            draft_order_id=summary.draft_order_id,
            export_id=attempt.export_id,
            attempt=attempt.attempt,
            status=status,
            erp_order_id=self._erp_order_id if status == "ACKED" else None,
            error=self._last_error.to_json() if status == "FAILED" and self._last_error else None,
            occurred_at=(delivered.sent_at if tried and delivered else None) or workflow.now(),
        )
        self._webhooks.push(request.erp_connection_id, summary.org_id, event, tries_before=tried.delivery_attempts if tried else 0)

    def _details(self, text: str) -> None:
        workflow.set_current_details(text)

    def _result(self) -> ExportResult:
        assert self._summary is not None
        return ExportResult(
            draft_order_id=self._summary.draft_order_id,
            export_id=self._attempt.export_id if self._attempt else None,
            attempt=self._attempt.attempt if self._attempt else 0,
            status=self._status,
            filename=self._attempt.filename if self._attempt else None,
            erp_order_id=self._erp_order_id,
            error=self._last_error,
        )

