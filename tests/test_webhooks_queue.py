"""The workflow's status-callback queue on the time-skipping server, with stub activities.

Only the ordering and give-up logic of ``workflows/webhook_queue.py`` is under test
here (the real activities are in tests/test_webhooks.py): events of one export are
sent one at a time in order, the export goes on while they are retried, and a
receiver that never answers is given up after the production window
(``WEBHOOK_GIVE_UP_AFTER``, a day) without the history growing per try.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from dropzone.contracts import (
    AttemptInfo,
    AttemptStatus,
    DeliveryOutcome,
    ExportRef,
    ExportRequest,
    MarkFailedInput,
    OpenAttemptInput,
    RenderInput,
    StoredExport,
    WebhookDelivery,
    WebhookDeliveryOutcome,
    WebhookGiveUp,
)
from starter.api import retry_export
from tests.helpers import make_draft, wait_for_state
from worker import WorkerGroup, build_workflow_runner
from workflows import policies
from workflows.export_order import ExportOrderWorkflow

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Stubs:
    """The export's activities, answering at once; deliveries fail for ``failing_attempts``;
    a callback fails while ``refuse(delivery, try)`` says so."""

    def __init__(self, *, failing_attempts: set[int], refuse) -> None:  # type: ignore[no-untyped-def]
        self.failing_attempts = failing_attempts
        self.refuse = refuse
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
            dropzone_label="stub", waits_for_ack=False, poll_interval_seconds=60, ack_timeout_seconds=600, webhook=True,
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

def stub_worker(client: Client, stubs: Stubs, executor) -> tuple[WorkerGroup, str]:  # type: ignore[no-untyped-def]
    """Like worker.build_worker: the export's queue, and the callbacks' own queue."""
    queue = f"stub-{uuid.uuid4().hex[:8]}"
    exports = Worker(
        client, task_queue=queue, workflows=[ExportOrderWorkflow], workflow_runner=build_workflow_runner(),
        activities=[stubs.open_attempt, stubs.render_and_store, stubs.deliver, stubs.mark_failed],
        activity_executor=executor,
    )
    callbacks = Worker(
        client, task_queue=policies.webhook_task_queue(queue), activities=[stubs.send_webhook, stubs.give_up_webhook],
        activity_executor=executor,
    )
    return WorkerGroup(exports, callbacks), queue


async def test_events_go_out_in_order_while_the_export_goes_on(time_skipping_env):
    from concurrent.futures import ThreadPoolExecutor

    client = time_skipping_env.client
    # The first event (FAILED of attempt 1) is refused for its first 4 tries.
    stubs = Stubs(failing_attempts={1}, refuse=lambda d, n: d.event.type == "export.failed" and n <= 4)
    draft = make_draft(org_id=uuid.uuid4())
    did = draft["draft_order_id"]
    with ThreadPoolExecutor(8) as executor:
        worker, queue = stub_worker(client, stubs, executor)
        async with worker:
            handle = await client.start_workflow(
                ExportOrderWorkflow.run, ExportRequest(erp_connection_id=uuid.uuid4(), draft=draft),
                id=f"erp-export-{did}", task_queue=queue,
            )
            await wait_for_state(client, did, lambda s: s.status == "FAILED" and s.waiting_for == "retry_signal")
            # The retry does not wait for the FAILED callback, which is still being retried.
            assert await retry_export(client, did) == 2
            result = await asyncio.wait_for(handle.result(), 60)
    assert result.status == "SENT" and result.attempt == 2
    delivered = [(t, a) for t, a, ok, _ in stubs.tries if ok]
    assert delivered == [("export.failed", 1), ("export.retry_started", 2), ("export.sent", 2)]
    # Nothing of a later event was tried before the earlier one was delivered.
    order = [(t, a) for t, a, _, _ in stubs.tries]
    assert order == [("export.failed", 1)] * 5 + [("export.retry_started", 2), ("export.sent", 2)]
    assert stubs.given_up == []


async def test_a_receiver_that_never_answers_is_given_up_after_a_day(time_skipping_env):
    from concurrent.futures import ThreadPoolExecutor

    client = time_skipping_env.client
    stubs = Stubs(failing_attempts=set(), refuse=lambda d, n: True)
    draft = make_draft(org_id=uuid.uuid4())
    with ThreadPoolExecutor(8) as executor:
        worker, queue = stub_worker(client, stubs, executor)
        async with worker:
            handle = await client.start_workflow(
                ExportOrderWorkflow.run, ExportRequest(erp_connection_id=uuid.uuid4(), draft=draft),
                id=f"erp-export-{draft['draft_order_id']}", task_queue=queue,
            )
            result = await asyncio.wait_for(handle.result(), 120)
            history = await handle.fetch_history()
            description = await handle.describe()
    assert result.status == "SENT"
    assert len(stubs.given_up) == 1 and stubs.given_up[0].delivery.event.type == "export.sent"
    tries = len(stubs.tries)
    # Backoff 1 s doubling to 10 min: about 150 tries in a day; none of them is a history event.
    assert 100 <= tries <= 200, tries
    assert len(history.events) < 60, len(history.events)  # a fixed number, whatever the tries
    assert description.start_time is not None and description.close_time is not None
    lived = description.close_time - description.start_time
    # Temporal stops once the next backoff (at most 10 min) would not fit in the day.
    window, backoff = policies.WEBHOOK_GIVE_UP_AFTER, policies.WEBHOOK_RETRY.maximum_interval
    assert backoff is not None and window - backoff <= lived <= window + timedelta(minutes=1), lived
