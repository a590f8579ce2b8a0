"""The status callbacks of one ExportOrderWorkflow run, sent in order in the background.

The workflow pushes an event at each transition and goes on at once: a slow
or dead receiver never delays, fails or duplicates the export. One coroutine
sends the events one after another (each is an activity retried with backoff),
so a receiver gets the events of an export in the order they happened. Each
event is given up once ``Policies.webhook_give_up_after`` has passed since it
happened; the run waits for the queue (``drained``) before it closes.

Once the run has nothing left to do but wait for its callbacks (``closing``),
an event's first try is a local activity (``send_webhook_at_close``, in the
run's own workflow task: no activity task and no extra workflow task for a
receiver that answers); a try that fails, or that the worker declines (its
threads for these are busy), goes on as the regular activity, with the same
backoff and window. Guarded by ``workflow.patched(AT_CLOSE_PATCH)``.

The SENT event usually never reaches this queue: the deliver activity tries it
first (``DeliverInput.sent_callback``, workflows/export_order.py ``_emit``), and
only a try that failed is pushed here, with ``tries_before`` counting it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from uuid import UUID

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from activities.webhooks import WebhookActivities
    from dropzone.contracts import WebhookDelivery, WebhookDeliveryOutcome, WebhookGiveUp
    from dropzone.webhooks import WebhookEvent
    from workflows.policies import Policies, webhook_task_queue

# Marker of the first status callback in a run's history.
WEBHOOK_PATCH = "status-callbacks"
# Marker of the first callback tried as a local activity of a closing run.
AT_CLOSE_PATCH = "status-callbacks-at-close"
# One try: a failed one goes on as the regular activity, whose retries count from there.
_ONE_TRY = RetryPolicy(maximum_attempts=1)


class WebhookQueue:
    def __init__(self, policies: Policies) -> None:
        self._policies = policies
        self._pending: deque[WebhookDelivery] = deque()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def idle(self) -> bool:
        return not self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, erp_connection_id: UUID, org_id: UUID, event: WebhookEvent, *, tries_before: int = 0) -> None:
        self._pending.append(
            WebhookDelivery(erp_connection_id=erp_connection_id, org_id=org_id, event=event, tries_before=tries_before)
        )
        if self._task is None:
            self._task = asyncio.create_task(self._send_all())

    def closing(self) -> None:
        """The run has nothing left to do but wait for its callbacks."""
        self._closing = True

    async def drained(self) -> None:
        """Until every event was delivered or given up (each within its own window)."""
        if self._pending:
            await workflow.wait_condition(lambda: not self._pending)

    async def _send_all(self) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self._pending))
            # Stays in the queue while it is sent, so that `idle` means "nothing left".
            await self._send(self._pending[0])
            self._pending.popleft()

    async def _try_at_close(self, delivery: WebhookDelivery) -> WebhookDelivery | None:
        """None once delivered; else the delivery for the regular activity, counting the local try."""
        try:
            outcome: WebhookDeliveryOutcome = await workflow.execute_local_activity_method(
                WebhookActivities.send_webhook_at_close,
                delivery,
                start_to_close_timeout=self._policies.webhook_timeout,
                retry_policy=_ONE_TRY,
                summary=f"status callback {delivery.event.type} (attempt {delivery.event.attempt})",
            )
        # (A local activity's failure comes as its cause, not wrapped in an ActivityError.)
        except (ActivityError, ApplicationError, TimeoutError):
            return delivery  # the ledger or the config, not the receiver: the activity says what it is
        if outcome.status == "DELIVERED":
            return None
        return delivery.model_copy(update={"tries_before": outcome.delivery_attempts})

    async def _send(self, delivery: WebhookDelivery) -> None:
        if self._closing and self._policies.webhook_local_at_close and workflow.patched(AT_CLOSE_PATCH):
            tried = await self._try_at_close(delivery)
            if tried is None:
                return
            delivery = tried
        event = delivery.event
        window_left = event.occurred_at + self._policies.webhook_give_up_after - workflow.now()
        try:
            await workflow.execute_activity_method(
                WebhookActivities.send_webhook,
                delivery,
                start_to_close_timeout=self._policies.webhook_timeout,
                schedule_to_close_timeout=max(window_left, self._policies.webhook_last_chance),
                retry_policy=self._policies.webhook_retry,
                task_queue=webhook_task_queue(workflow.info().task_queue),
                summary=f"status callback {event.type} (attempt {event.attempt})",
            )
        except ActivityError as err:
            # The window ran out (or the connection lost its webhook): record it and
            # go on with the next event; the export itself is not affected.
            cause = err.cause or err
            workflow.logger.warning("status callback %s given up: %s", event.event_id, cause)
            try:
                await workflow.execute_activity_method(
                    WebhookActivities.give_up_webhook,
                    WebhookGiveUp(delivery=delivery, reason=str(getattr(cause, "message", cause))[:500]),
                    start_to_close_timeout=self._policies.ledger_timeout,
                    schedule_to_close_timeout=self._policies.transient_give_up_after,
                    retry_policy=self._policies.ledger_retry,
                    task_queue=webhook_task_queue(workflow.info().task_queue),
                    summary="record a given-up status callback",
                )
            except ActivityError:  # the ledger was down for a day: the row keeps its last error
                workflow.logger.warning("could not record status callback %s as given up", event.event_id)
