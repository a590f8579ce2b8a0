"""ExportOrderWorkflow: one approved draft, delivered once per attempt, until ACKED.

Deterministic orchestration only: no I/O, no clock, no randomness. Every side
effect is an activity; the ledger row of each attempt is the durable record an
operator reads, the workflow state is what the `status` query answers.

A FAILED attempt waits up to ``RETRY_SIGNAL_WINDOW`` for an operator's retry.
When it failed only because the ack timeout ran out (ACK_TIMEOUT), the ERP may
still answer: while waiting, the run keeps polling for that late ack with the
same activity-retry polling as the ack wait (no history events per poll). A
late ack ends the run ACKED; a late error_ keeps it FAILED with the ERP's
error, still waiting for the retry signal; a retry or cancel signal cancels the
late poll. Guarded by ``workflow.patched(LATE_ACK_PATCH)``: runs that were
already waiting for a retry before this existed replay unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

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
    )
    from dropzone.errors import (
        ACK_TIMEOUT,
        ACTIVITY_TIMEOUT,
        AckNotYetAvailable,
        DropzoneError,
    )
    from dropzone.export_v1 import validate_draft

    # Constants only; shared with the worker process (worker.build_workflow_runner)
    # so that one worker process (the chaos suite's) can shorten its timeouts.
    from workflows import policies

# Marker of the late-ack poll in histories: keep this id as long as runs that
# started before it may be open (RETRY_SIGNAL_WINDOW after the last such deploy).
LATE_ACK_PATCH = "late-ack-after-ack-timeout"


def error_info_from(err: BaseException) -> ErrorInfo:
    """The operator-facing error of a failed activity."""
    cause = err.cause if isinstance(err, ActivityError) else err
    if isinstance(cause, ApplicationError):
        details = cause.details[0] if cause.details else {}
        fields = details.get("fields", []) if isinstance(details, dict) else []
        return ErrorInfo(code=cause.type or "ACTIVITY_FAILED", message=cause.message, fields=fields)
    if isinstance(cause, TimeoutError):
        return ErrorInfo(code=ACTIVITY_TIMEOUT, message=f"activity timed out ({cause.type.name if cause.type else 'unknown'})")
    return ErrorInfo(code="ACTIVITY_FAILED", message=str(cause or err))


@workflow.defn(name=policies.WORKFLOW_TYPE)
class ExportOrderWorkflow:
    def __init__(self) -> None:
        self._summary: DraftSummary | None = None
        self._attempt: AttemptInfo | None = None
        self._status: ExportStatusName = "PENDING"
        self._erp_order_id: str | None = None
        self._last_error: ErrorInfo | None = None
        self._waiting_for: str = "nothing"
        self._retry_requested = False
        self._cancel_requested = False
        self._run_seq = 0

    @workflow.run
    async def run(self, request: ExportRequest) -> ExportResult:
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
                return self._result()
            self._waiting_for = "retry_signal"
            if not await self._wait_for_retry():
                return self._result()
            self._retry_requested = False

    # --- signals and query ---------------------------------------------------

    @workflow.signal
    def retry(self, request: RetryRequest) -> None:
        # Only a FAILED export can be retried; a retry of a healthy one is ignored
        # so that a double click never produces a second file.
        if self._status == "FAILED" and self._waiting_for == "retry_signal":
            self._retry_requested = True

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
            start_to_close_timeout=policies.RENDER_TIMEOUT,
            schedule_to_close_timeout=policies.TRANSIENT_GIVE_UP_AFTER,
            retry_policy=policies.LEDGER_RETRY,
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
                start_to_close_timeout=policies.LEDGER_TIMEOUT,
                schedule_to_close_timeout=policies.TRANSIENT_GIVE_UP_AFTER,
                retry_policy=policies.LEDGER_RETRY,
                summary="open attempt",
            )
        except ActivityError as err:
            # No row could be opened (unknown connection, bad config): nothing to mark.
            self._fail(error_info_from(err))
            return
        attempt = self._attempt
        try:
            self._waiting_for = "delivery"
            self._details(f"attempt {attempt.attempt}: rendering {attempt.filename}")
            await workflow.execute_activity_method(
                ExportActivities.render_and_store,
                RenderInput(export_id=attempt.export_id, draft=request.draft, draft_ref=request.draft_ref),
                start_to_close_timeout=policies.RENDER_TIMEOUT,
                heartbeat_timeout=policies.RENDER_HEARTBEAT_TIMEOUT,
                schedule_to_close_timeout=policies.TRANSIENT_GIVE_UP_AFTER,
                retry_policy=policies.LEDGER_RETRY,
                summary=f"render and store {attempt.storage_key}",
            )
            self._details(f"attempt {attempt.attempt}: delivering to {attempt.dropzone_label}")
            await workflow.execute_activity_method(
                ExportActivities.deliver,
                ExportRef(export_id=attempt.export_id),
                start_to_close_timeout=policies.DELIVER_TIMEOUT,
                heartbeat_timeout=policies.DELIVER_HEARTBEAT_TIMEOUT,
                schedule_to_close_timeout=policies.TRANSIENT_GIVE_UP_AFTER,
                retry_policy=policies.DELIVER_RETRY,
                summary=f"deliver {attempt.filename} to {attempt.dropzone_label}",
            )
            self._set_status("SENT")
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
            self._details(f"attempt {attempt.attempt}: ACKED as {outcome.erp_order_id}")
        else:
            self._fail(outcome.error or ErrorInfo(code="ERP_REJECTED", message="rejected by the ERP"))

    async def _await_ack(self, attempt: AttemptInfo) -> AckOutcome | None:
        self._waiting_for = "ack"
        self._details(
            f"attempt {attempt.attempt}: waiting for ack_{attempt.filename} since "
            f"{workflow.now():%Y-%m-%d %H:%M:%S} UTC, polling every {attempt.poll_interval_seconds} s"
        )
        poll = asyncio.ensure_future(
            workflow.execute_activity_method(
                AckActivities.poll_ack,
                ExportRef(export_id=attempt.export_id),
                start_to_close_timeout=policies.ACK_POLL_TIMEOUT,
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

    # --- after a FAILED attempt ---------------------------------------------------

    async def _wait_for_retry(self) -> bool:
        """True when an operator asked for a retry; False when the run should close."""
        attempt = self._attempt
        late_ack_possible = (
            attempt is not None
            and attempt.waits_for_ack
            and self._last_error is not None
            and self._last_error.code == ACK_TIMEOUT
        )
        # patched() only where the new code issues new commands, so that
        # histories of other failures never carry the marker.
        if attempt is None or not late_ack_possible or not workflow.patched(LATE_ACK_PATCH):
            return await self._wait_for_retry_signal()
        return await self._wait_for_retry_or_late_ack(attempt)

    async def _wait_for_retry_signal(self) -> bool:
        self._details(f"FAILED ({self._last_error.code if self._last_error else '?'}); waiting for a retry signal")
        try:
            await workflow.wait_condition(
                lambda: self._retry_requested or self._cancel_requested,
                timeout=policies.RETRY_SIGNAL_WINDOW,
            )
        except asyncio.TimeoutError:
            return False
        return not self._cancel_requested

    async def _wait_for_retry_or_late_ack(self, attempt: AttemptInfo) -> bool:
        """The retry wait of an ACK_TIMEOUT attempt, racing a poll for the ERP's late answer."""
        deadline = workflow.now() + policies.RETRY_SIGNAL_WINDOW
        late = self._start_late_poll(attempt)
        self._details(
            f"FAILED (ACK_TIMEOUT); waiting for a retry signal, still looking for a late "
            f"ack_{attempt.filename} every {attempt.poll_interval_seconds} s"
        )
        if not await self._signal_or(deadline, late.done):
            _stop(late)
            return False
        if not late.done():  # a retry or cancel signal: nobody needs the late answer any more
            _stop(late)
            return not self._cancel_requested
        outcome = self._late_outcome(attempt, late)
        # An ack beats a retry signal that came with it: the ERP has the order,
        # a new attempt would send it twice.
        if outcome is not None and outcome.status == "ACKED":
            return False
        # A late error (or a poll that gave up): the signal is all there is left to wait for.
        if not await self._signal_or(deadline):
            return False
        return not self._cancel_requested

    async def _signal_or(self, deadline: datetime, also: Callable[[], bool] = lambda: False) -> bool:
        """Wait for a retry or cancel signal (or ``also``); False when ``deadline`` comes first."""
        remaining = deadline - workflow.now()
        if remaining <= timedelta(0):
            return False
        try:
            await workflow.wait_condition(
                lambda: self._retry_requested or self._cancel_requested or also(), timeout=remaining
            )
        except asyncio.TimeoutError:
            return False
        return True

    def _start_late_poll(self, attempt: AttemptInfo) -> asyncio.Future[AckOutcome]:
        return asyncio.ensure_future(
            workflow.execute_activity_method(
                AckActivities.poll_ack,
                ExportRef(export_id=attempt.export_id),
                start_to_close_timeout=policies.ACK_POLL_TIMEOUT,
                schedule_to_close_timeout=policies.RETRY_SIGNAL_WINDOW,
                retry_policy=policies.ack_poll_retry(attempt.poll_interval_seconds),
                summary=f"look for a late ack_{attempt.filename}",
            )
        )

    def _late_outcome(self, attempt: AttemptInfo, late: asyncio.Future[AckOutcome]) -> AckOutcome | None:
        """Apply the late poll's answer to the run's state; None if the poll gave up."""
        try:
            outcome = late.result()
        except ActivityError as err:
            # The retry window ran out under it, or the dropzone became unusable
            # (permission, config): stop looking, the retry signal still works
            # and any other poll on this connection sweeps a late ack.
            error = error_info_from(err)
            workflow.logger.warning("late-ack poll stopped: %s %s", error.code, error.message)
            return None
        if outcome.status == "ACKED":
            self._erp_order_id = outcome.erp_order_id
            self._last_error = None
            self._waiting_for = "nothing"
            self._set_status("ACKED")
            self._details(f"attempt {attempt.attempt}: ACKED as {outcome.erp_order_id} (the ack came after the ack timeout)")
        else:
            self._fail(outcome.error or ErrorInfo(code="ERP_REJECTED", message="rejected by the ERP"))
            self._details(
                f"attempt {attempt.attempt}: FAILED ({self._last_error.code if self._last_error else '?'}, "
                "answered by the ERP after the ack timeout); waiting for a retry signal"
            )
        return outcome

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
            start_to_close_timeout=policies.LEDGER_TIMEOUT,
            retry_policy=policies.LEDGER_RETRY,
            summary="record failure",
        )
        self._fail(error)

    # --- state ---------------------------------------------------------------

    def _fail(self, error: ErrorInfo) -> None:
        self._last_error = error
        self._set_status("FAILED")

    def _set_status(self, status: ExportStatusName) -> None:
        self._status = status
        workflow.upsert_search_attributes([policies.SA_EXPORT_STATUS.value_set(status)])

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


def _stop(poll: asyncio.Future[AckOutcome]) -> None:
    """Cancel a late-ack poll nobody waits for any more (Temporal cancels the activity)."""
    if not poll.done():
        poll.cancel()
