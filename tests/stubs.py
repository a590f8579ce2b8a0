"""Stub activities for fast workflow-logic tests on the time-skipping server.

As the temporalio/samples-python tests do: the real workflows, on a real worker
(``worker.serve_task_queue``, with the ``Policies`` the test hands it), with
activities that answer at once under the real activity names. Only what the
workflow does with the answers is under test; the real activities have their
own tests.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowHistory
from temporalio.exceptions import ApplicationError

from dropzone.contracts import (
    AckOutcome,
    AttemptInfo,
    AttemptStatus,
    DeliverInput,
    DeliveryOutcome,
    EnsureListenerInput,
    ExportRef,
    ExportRequest,
    ExportResult,
    ListenerRef,
    MarkFailedInput,
    OpenAttemptInput,
    RenderInput,
    StoredExport,
    WebhookDelivery,
    WebhookDeliveryOutcome,
    WebhookGiveUp,
)
from dropzone.webhooks import WebhookEvent, sent_event_id
from tests.helpers import make_draft
from worker import WorkerGroup, serve_task_queue
from workflows.export_order import ExportOrderWorkflow
from workflows.policies import DEFAULT_POLICIES, Policies

POLL_INTERVAL_SECONDS = 60


class StubActivities:
    """The export's activities, answering at once.

    Deliveries of the attempts in ``failing_attempts`` fail for good; a callback
    fails while ``refuse(delivery, try)`` says so; an attempt waits for an ack
    when ``waits_for_ack`` (the ack listener stub declines, so the per-export
    poll answers ACKED at once). With ``sends_with_delivery``, deliver makes the
    SENT callback's first try itself when asked (``DeliverInput.sent_callback``);
    without it, deliver never does, as before that existed.
    """

    def __init__(
        self,
        *,
        failing_attempts: set[int] | frozenset[int] = frozenset(),
        refuse: Callable[[WebhookDelivery, int], bool] = lambda delivery, try_number: False,
        waits_for_ack: bool = False,
        sends_with_delivery: bool = False,
    ) -> None:
        self.sends_with_delivery = sends_with_delivery
        self.failing_attempts = failing_attempts
        self.refuse = refuse
        self.waits_for_ack = waits_for_ack
        self.attempts: dict[uuid.UUID, int] = {}
        self.tries: list[tuple[str, int, bool, datetime]] = []  # (event type, attempt, delivered, when)
        self.event_ids: list[uuid.UUID] = []  # of every try, in order
        self.given_up: list[WebhookGiveUp] = []
        self._lock = threading.Lock()

    @activity.defn(name="open_attempt")
    def open_attempt(self, request: OpenAttemptInput) -> AttemptInfo:
        export_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{request.workflow_run_id}/{request.run_seq}")
        with self._lock:
            self.attempts[export_id] = request.run_seq
        return AttemptInfo(
            export_id=export_id, attempt=request.run_seq, filename=f"f{request.run_seq}.json", storage_key="k",
            dropzone_label="stub", waits_for_ack=self.waits_for_ack, poll_interval_seconds=POLL_INTERVAL_SECONDS,
            ack_timeout_seconds=600, webhook=True,
        )

    @activity.defn(name="render_and_store")
    def render_and_store(self, request: RenderInput) -> StoredExport:
        return StoredExport(export_id=request.export_id, storage_key="k", sha256="0" * 64, size_bytes=1)

    @activity.defn(name="deliver")
    def deliver(self, ref: DeliverInput) -> DeliveryOutcome:
        attempt = self.attempts[ref.export_id]
        if attempt in self.failing_attempts:
            raise ApplicationError("permission denied", type="PERMISSION_DENIED", non_retryable=True)
        sent_at, tried = datetime.now(UTC), None
        if ref.sent_callback and self.sends_with_delivery:
            event = WebhookEvent(
                event_id=sent_event_id(ref.export_id), type="export.sent", draft_order_id=uuid.uuid4(),
                export_id=ref.export_id, attempt=attempt, status="SENT", occurred_at=sent_at,
            )
            delivery = WebhookDelivery(erp_connection_id=uuid.uuid4(), org_id=uuid.uuid4(), event=event)
            tried = WebhookDeliveryOutcome(
                event_id=event.event_id, status="DELIVERED" if self._try(delivery, 1) else "PENDING", delivery_attempts=1
            )
        return DeliveryOutcome(
            export_id=ref.export_id, dropzone_path="/x", already_present=False, size_bytes=1, sent_at=sent_at,
            sent_callback=tried,
        )

    @activity.defn(name="mark_failed")
    def mark_failed(self, request: MarkFailedInput) -> AttemptStatus:
        return AttemptStatus(export_id=request.export_id, status="FAILED")

    @activity.defn(name="ensure_ack_listener")
    def ensure_ack_listener(self, request: EnsureListenerInput) -> ListenerRef:
        return ListenerRef(workflow_id="stub-listener", enabled=False)

    @activity.defn(name="poll_ack")
    def poll_ack(self, ref: ExportRef) -> AckOutcome:
        return AckOutcome(export_id=ref.export_id, status="ACKED", erp_order_id="SO-STUB")

    def _try(self, delivery: WebhookDelivery, try_number: int) -> bool:
        refused = self.refuse(delivery, try_number)
        with self._lock:
            self.tries.append((delivery.event.type, delivery.event.attempt, not refused, datetime.now(UTC)))
            self.event_ids.append(delivery.event.event_id)
        return not refused

    @activity.defn(name="send_webhook")
    def send_webhook(self, delivery: WebhookDelivery) -> WebhookDeliveryOutcome:
        try_number = delivery.tries_before + activity.info().attempt
        if not self._try(delivery, try_number):
            raise ApplicationError("receiver answered HTTP 503", type="WEBHOOK_UNDELIVERED")
        return WebhookDeliveryOutcome(event_id=delivery.event.event_id, status="DELIVERED", delivery_attempts=try_number)

    @activity.defn(name="send_webhook_at_close")
    async def send_webhook_at_close(self, delivery: WebhookDelivery) -> WebhookDeliveryOutcome:
        tries = delivery.tries_before + 1
        delivered = self._try(delivery, tries)
        return WebhookDeliveryOutcome(
            event_id=delivery.event.event_id, status="DELIVERED" if delivered else "PENDING", delivery_attempts=tries
        )

    @activity.defn(name="give_up_webhook")
    def give_up_webhook(self, request: WebhookGiveUp) -> WebhookDeliveryOutcome:
        with self._lock:
            self.given_up.append(request)
        return WebhookDeliveryOutcome(event_id=request.delivery.event.event_id, status="GAVE_UP", delivery_attempts=0)


def stub_worker(
    client: Client, stubs: StubActivities, executor: ThreadPoolExecutor, *, policies: Policies = DEFAULT_POLICIES
) -> tuple[WorkerGroup, str]:
    """The worker's task queues (the export's, the callbacks' own) on a fresh name, with ``policies``."""
    queue = f"stub-{uuid.uuid4().hex[:8]}"
    group = serve_task_queue(
        client,
        task_queue=queue,
        activities=[
            stubs.open_attempt, stubs.render_and_store, stubs.deliver, stubs.mark_failed,
            stubs.ensure_ack_listener, stubs.poll_ack, stubs.send_webhook_at_close,
        ],
        webhook_activities=[stubs.send_webhook, stubs.give_up_webhook],
        executor=executor,
        max_concurrent_activities=8,
        policies=policies,
    )
    return group, queue


async def run_to_close(
    client: Client, stubs: StubActivities, *, policies: Policies = DEFAULT_POLICIES
) -> tuple[ExportResult, WorkflowHistory, WorkflowExecutionDescription]:
    """One export of a new draft on a stub worker, until its run closed: its result, history and description."""
    draft = make_draft(org_id=uuid.uuid4())
    with ThreadPoolExecutor(8) as executor:
        worker, queue = stub_worker(client, stubs, executor, policies=policies)
        async with worker:
            handle = await client.start_workflow(
                ExportOrderWorkflow.run, ExportRequest(erp_connection_id=uuid.uuid4(), draft=draft),
                id=f"erp-export-{draft['draft_order_id']}", task_queue=queue,
            )
            result = await asyncio.wait_for(handle.result(), 120)
            return result, await handle.fetch_history(), await handle.describe()
