"""Stub activities for fast workflow-logic tests on the time-skipping server.

As the temporalio/samples-python tests do: the real workflows, on a real worker
(``worker.serve_task_queue``, with the ``Policies`` the test hands it), with
activities that answer at once under the real activity names. Only what the
workflow does with the answers is under test; the real activities have their
own tests.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from dropzone.contracts import (
    AckOutcome,
    AttemptInfo,
    AttemptStatus,
    DeliveryOutcome,
    EnsureListenerInput,
    ExportRef,
    ListenerRef,
    MarkFailedInput,
    OpenAttemptInput,
    RenderInput,
    StoredExport,
    WebhookDelivery,
    WebhookDeliveryOutcome,
    WebhookGiveUp,
)
from worker import WorkerGroup, serve_task_queue
from workflows.policies import DEFAULT_POLICIES, Policies

POLL_INTERVAL_SECONDS = 60


class StubActivities:
    """The export's activities, answering at once.

    Deliveries of the attempts in ``failing_attempts`` fail for good; a callback
    fails while ``refuse(delivery, try)`` says so; an attempt waits for an ack
    when ``waits_for_ack`` (the ack listener stub declines, so the per-export
    poll answers ACKED at once).
    """

    def __init__(
        self,
        *,
        failing_attempts: set[int] | frozenset[int] = frozenset(),
        refuse: Callable[[WebhookDelivery, int], bool] = lambda delivery, try_number: False,
        waits_for_ack: bool = False,
    ) -> None:
        self.failing_attempts = failing_attempts
        self.refuse = refuse
        self.waits_for_ack = waits_for_ack
        self.attempts: dict[uuid.UUID, int] = {}
        self.tries: list[tuple[str, int, bool, datetime]] = []  # (event type, attempt, delivered, when)
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
    def deliver(self, ref: ExportRef) -> DeliveryOutcome:
        if self.attempts[ref.export_id] in self.failing_attempts:
            raise ApplicationError("permission denied", type="PERMISSION_DENIED", non_retryable=True)
        return DeliveryOutcome(export_id=ref.export_id, dropzone_path="/x", already_present=False, size_bytes=1)

    @activity.defn(name="mark_failed")
    def mark_failed(self, request: MarkFailedInput) -> AttemptStatus:
        return AttemptStatus(export_id=request.export_id, status="FAILED")

    @activity.defn(name="ensure_ack_listener")
    def ensure_ack_listener(self, request: EnsureListenerInput) -> ListenerRef:
        return ListenerRef(workflow_id="stub-listener", enabled=False)

    @activity.defn(name="poll_ack")
    def poll_ack(self, ref: ExportRef) -> AckOutcome:
        return AckOutcome(export_id=ref.export_id, status="ACKED", erp_order_id="SO-STUB")

    @activity.defn(name="send_webhook")
    def send_webhook(self, delivery: WebhookDelivery) -> WebhookDeliveryOutcome:
        try_number = activity.info().attempt
        refused = self.refuse(delivery, try_number)
        with self._lock:
            self.tries.append((delivery.event.type, delivery.event.attempt, not refused, datetime.now(UTC)))
        if refused:
            raise ApplicationError("receiver answered HTTP 503", type="WEBHOOK_UNDELIVERED")
        return WebhookDeliveryOutcome(event_id=delivery.event.event_id, status="DELIVERED", delivery_attempts=try_number)

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
            stubs.ensure_ack_listener, stubs.poll_ack,
        ],
        webhook_activities=[stubs.send_webhook, stubs.give_up_webhook],
        executor=executor,
        max_concurrent_activities=8,
        policies=policies,
    )
    return group, queue
