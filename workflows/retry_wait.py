"""The wait of a FAILED export for an operator's retry (part of ExportOrderWorkflow).

A FAILED attempt waits up to ``Policies.retry_signal_window`` for a retry (the ``retry``
signal or the ``retry_export`` Update). When it failed only because the ack
timeout ran out (ACK_TIMEOUT), the ERP may still answer: while waiting, the run
keeps polling for that late ack with the same activity-retry polling as the ack
wait (no history events per poll). A late ack ends the run ACKED; a late error_
keeps it FAILED with the ERP's error, still waiting for a retry; a retry or
cancel cancels the late poll. Guarded by ``workflow.patched(LATE_ACK_PATCH)``:
runs that were already waiting for a retry before this existed replay unchanged.

A mixin of ``workflows.export_order.ExportOrderWorkflow``: it reads and sets
that workflow's state (``_retry_requested``, ``_cancel_requested``, ``_status``…).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from activities.acks import AckActivities
    from dropzone.contracts import AckOutcome, AttemptInfo, ErrorInfo, ExportRef
    from dropzone.errors import ACK_TIMEOUT, ACTIVITY_TIMEOUT
    from workflows import policies

# Marker of the late-ack poll in histories: keep this id as long as runs that
# started before it may be open (the retry signal window after the last such deploy).
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


class RetryWait:
    # Provided by ExportOrderWorkflow.
    _policies: policies.Policies
    _attempt: AttemptInfo | None
    _last_error: ErrorInfo | None
    _erp_order_id: str | None
    _waiting_for: str
    _retry_requested: bool
    _cancel_requested: bool
    _details: Callable[[str], None]
    _fail: Callable[[ErrorInfo], None]
    _set_status: Callable[[Any], None]
    _emit: Callable[[Any], None]

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
                timeout=self._policies.retry_signal_window,
            )
        except asyncio.TimeoutError:
            return False
        return not self._cancel_requested

    async def _wait_for_retry_or_late_ack(self, attempt: AttemptInfo) -> bool:
        """The retry wait of an ACK_TIMEOUT attempt, racing a poll for the ERP's late answer."""
        deadline = workflow.now() + self._policies.retry_signal_window
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
                start_to_close_timeout=self._policies.ack_poll_timeout,
                schedule_to_close_timeout=self._policies.retry_signal_window,
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
            self._emit("ACKED")
            self._details(f"attempt {attempt.attempt}: ACKED as {outcome.erp_order_id} (the ack came after the ack timeout)")
        else:
            self._fail(outcome.error or ErrorInfo(code="ERP_REJECTED", message="rejected by the ERP"))
            self._emit("FAILED")
            self._details(
                f"attempt {attempt.attempt}: FAILED ({self._last_error.code if self._last_error else '?'}, "
                "answered by the ERP after the ack timeout); waiting for a retry signal"
            )
        return outcome


def _stop(poll: asyncio.Future[AckOutcome]) -> None:
    """Cancel a late-ack poll nobody waits for any more (Temporal cancels the activity)."""
    if not poll.done():
        poll.cancel()
