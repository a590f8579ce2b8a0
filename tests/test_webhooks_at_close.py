"""The local try of a closing run's callback (``WebhookActivities.send_webhook_at_close``).

Real PostgreSQL ledger and a real HTTP receiver on 127.0.0.1: a try that gets no answer
ends after the short local timeout and is recorded as the first try; while its one
thread is taken, the next try is declined (nothing sent, nothing recorded), and so are
the connection's next ones for a while, so a hanging receiver holds a closing run's
workflow task once, not every time. Either way the regular ``send_webhook`` takes over
(tests/test_webhooks_queue.py).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from activities.webhooks import WebhookActivities
from dropzone.contracts import WebhookDelivery
from dropzone.ledger import Ledger
from dropzone.ledger.webhooks import WebhookEvents
from dropzone.webhooks import WebhookEvent
from tests.conftest import Target
from tests.helpers import eventually
from tests.test_webhooks import Receiver, with_webhook

pytestmark = pytest.mark.asyncio(loop_scope="session")


def sent_event(target: Target) -> WebhookDelivery:
    event = WebhookEvent(
        event_id=uuid.uuid4(), type="export.sent", draft_order_id=uuid.uuid4(), export_id=uuid.uuid4(),
        attempt=1, status="SENT", occurred_at=datetime.now(UTC),
    )
    return WebhookDelivery(erp_connection_id=target.connection_id, org_id=target.org_id, event=event)


async def test_a_hanging_receiver_holds_one_local_try_and_the_next_ones_are_declined(ledger: Ledger, fs_target: Target):
    receiver = Receiver().start()
    receiver.answering.clear()  # every request hangs
    with_webhook(ledger, fs_target, receiver.url)
    activities = WebhookActivities(ledger, max_in_flight=1, local_timeout=timedelta(seconds=5))
    first, second, third = sent_event(fs_target), sent_event(fs_target), sent_event(fs_target)
    try:
        hanging = asyncio.create_task(activities.send_webhook_at_close(first))
        await eventually(lambda: len(receiver.received()) == 1, timeout=30, what="the first try reached the receiver")
        busy = await activities.send_webhook_at_close(second)  # its one thread is taken
        assert not hanging.done()  # declined while the first still waits for its answer
        timed_out = await asyncio.wait_for(hanging, 30)
        paused = await activities.send_webhook_at_close(third)  # the thread is free, the connection paused
    finally:
        receiver.answering.set()
        receiver.stop()
        activities.close()
    assert (busy.status, busy.delivery_attempts) == ("PENDING", 0)
    assert (timed_out.status, timed_out.delivery_attempts) == ("PENDING", 1)
    assert (paused.status, paused.delivery_attempts) == ("PENDING", 0)
    assert len(receiver.received()) == 1  # the declined ones were not sent
    events = WebhookEvents(ledger)
    assert events.for_draft(second.event.draft_order_id) == events.for_draft(third.event.draft_order_id) == []
    [row] = events.for_draft(first.event.draft_order_id)
    assert (str(row.status), row.delivery_attempts) == ("PENDING", 1)
    assert "no answer within 5 s" in (row.last_error or "")


async def test_a_receiver_that_answers_gets_the_event_from_the_local_try(ledger: Ledger, fs_target: Target):
    receiver = Receiver(status=204).start()
    with_webhook(ledger, fs_target, receiver.url)
    activities = WebhookActivities(ledger)
    delivery = sent_event(fs_target)
    try:
        outcome = await activities.send_webhook_at_close(delivery)
    finally:
        receiver.stop()
        activities.close()
    assert (outcome.status, outcome.delivery_attempts, outcome.response_status) == ("DELIVERED", 1, 204)
    [request] = receiver.received()
    assert request.headers["webhook-id"] == str(delivery.event.event_id)
    [row] = WebhookEvents(ledger).for_draft(delivery.event.draft_order_id)
    assert (str(row.status), row.delivery_attempts, row.response_status) == ("DELIVERED", 1, 204)
