"""The ack wait of an export through its connection's ack listener (part of ExportOrderWorkflow).

Runs that pass ``workflow.patched(ACK_LISTENER_PATCH)`` (new runs, while
``Policies.ack_listener`` is on) make sure the connection's listener runs
(``ensure_ack_listener``, one activity per attempt) and then wait on a durable
timer for the ack timeout: no activity, no ledger query and no dropzone
request while they wait. The listener records the ERP's answer in the ledger
and hands it over with the ``hand_over_ack`` Update; the file moves only after
the Update was accepted.

A late answer (the attempt FAILED with ACK_TIMEOUT and waits for a retry) is
handed over the same way and applied as the late-ack poll's answer is
(``RetryWait._late_outcome``). Runs that were already waiting on the
per-export poll keep it (``RetryWait`` and ``_await_ack``'s old branch).

A mixin of ``workflows.export_order.ExportOrderWorkflow``, like ``RetryWait``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.ack_listener import HAND_OVER_UPDATE, NOT_FOR_THIS_RUN, AckListenerActivities
    from activities.exports import ExportActivities
    from dropzone.contracts import (
        AckAccepted,
        AckHandover,
        AckOutcome,
        AttemptInfo,
        AttemptStatus,
        EnsureListenerInput,
        ErrorInfo,
        ExportRequest,
        ListenerRef,
        MarkFailedInput,
    )
    from dropzone.errors import ACK_TIMEOUT
    from workflows import policies

from workflows.retry_wait import RetryWait

# Marker of the listener wait in histories: keep it while runs from before it may be open.
ACK_LISTENER_PATCH = "ack-listener"


class ListenerWait(RetryWait):
    # Provided by ExportOrderWorkflow.
    _request: ExportRequest | None
    _closing: bool
    _handed: dict[UUID, AckOutcome]
    _listening_to: UUID | None
    _emit: Callable[[Any], None]

    # --- the hand-over --------------------------------------------------------

    @workflow.update(name=HAND_OVER_UPDATE)
    def hand_over_ack(self, handover: AckHandover) -> AckAccepted:
        """The ERP's answer to the current attempt, recorded in the ledger by the listener."""
        export_id = handover.outcome.export_id
        applied = export_id not in self._handed
        if applied:  # a repeated hand-over (the listener died before moving the file) changes nothing
            self._handed[export_id] = handover.outcome
        return AckAccepted(export_id=export_id, applied=applied)

    @hand_over_ack.validator
    def _validate_hand_over(self, handover: AckHandover) -> None:
        attempt = self._attempt
        if attempt is None or attempt.export_id != handover.outcome.export_id or self._closing:
            # Another attempt's (or a closing run's): the ledger has it, nobody here waits for it.
            raise ApplicationError("this run does not wait for that export's answer", type=NOT_FOR_THIS_RUN)

    # --- the ack wait ---------------------------------------------------------

    async def _listener_ref(self, attempt: AttemptInfo) -> ListenerRef:
        assert self._request is not None
        return await workflow.execute_activity_method(
            AckListenerActivities.ensure_ack_listener,
            EnsureListenerInput(
                erp_connection_id=self._request.erp_connection_id,
                task_queue=workflow.info().task_queue,
                export_id=attempt.export_id,
            ),
            start_to_close_timeout=self._policies.ensure_listener_timeout,
            schedule_to_close_timeout=self._policies.transient_give_up_after,
            retry_policy=self._policies.ledger_retry,
            summary="make sure the connection's ack listener runs",
        )

    async def _await_handed_ack(self, attempt: AttemptInfo, listener: str) -> AckOutcome | None:
        """The listener's hand-over, or ACK_TIMEOUT recorded (then None, FAILED), or None when cancelled."""
        self._listening_to = attempt.export_id
        self._waiting_for = "ack"
        self._details(
            f"attempt {attempt.attempt}: waiting for ack_{attempt.filename} since "
            f"{workflow.now():%Y-%m-%d %H:%M:%S} UTC, listened for by {listener} every {attempt.poll_interval_seconds} s"
        )
        try:
            await workflow.wait_condition(
                lambda: attempt.export_id in self._handed or self._cancel_requested,
                timeout=timedelta(seconds=attempt.ack_timeout_seconds),
            )
        except asyncio.TimeoutError:
            error = ErrorInfo(code=ACK_TIMEOUT, message="no ack or error file arrived within the ack timeout")
            recorded: AttemptStatus = await workflow.execute_activity_method(
                ExportActivities.mark_failed,
                MarkFailedInput(export_id=attempt.export_id, error=error),
                start_to_close_timeout=self._policies.ledger_timeout,
                retry_policy=self._policies.ledger_retry,
                summary="record failure",
            )
            if recorded.status == "FAILED":
                self._fail(error)
                self._emit("FAILED")
                return None
            # The listener recorded the answer just before the timer fired: its hand-over follows.
            await workflow.wait_condition(lambda: attempt.export_id in self._handed or self._cancel_requested)
        if attempt.export_id in self._handed:
            return self._handed[attempt.export_id]
        self._waiting_for = "nothing"
        self._details(f"attempt {attempt.attempt}: cancelled while waiting for the ack")
        return None

    # --- the retry wait of an ACK_TIMEOUT attempt ----------------------------

    async def _wait_for_retry(self) -> bool:
        attempt = self._attempt
        if (
            attempt is None
            or self._listening_to != attempt.export_id
            or self._last_error is None
            or self._last_error.code != ACK_TIMEOUT
        ):
            return await super()._wait_for_retry()
        deadline = workflow.now() + self._policies.retry_signal_window
        self._details(
            f"FAILED (ACK_TIMEOUT); waiting for a retry signal, the ack listener still takes a late ack_{attempt.filename}"
        )
        if not await self._signal_or(deadline, lambda: attempt.export_id in self._handed):
            return False
        if attempt.export_id not in self._handed:  # a retry or cancel signal
            return not self._cancel_requested
        answered: asyncio.Future[AckOutcome] = asyncio.get_running_loop().create_future()
        answered.set_result(self._handed[attempt.export_id])
        outcome = self._late_outcome(attempt, answered)
        # An ack beats a retry signal that came with it: the ERP has the order.
        if outcome is not None and outcome.status == "ACKED":
            return False
        if not await self._signal_or(deadline):
            return False
        return not self._cancel_requested
