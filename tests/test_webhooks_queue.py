"""The workflow's status-callback queue on the time-skipping server, with stub activities.

Only the ordering and give-up logic of ``workflows/webhook_queue.py`` is under test
here (the real activities are in tests/test_webhooks.py): events of one export are
sent one at a time in order, the export goes on while they are retried, and a
receiver that never answers is given up after the production window
(``Policies.webhook_give_up_after``, a day) without the history growing per try.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from dropzone.contracts import ExportRequest
from starter.api import retry_export
from tests.helpers import make_draft, wait_for_state
from tests.stubs import StubActivities, stub_worker
from workflows.export_order import ExportOrderWorkflow
from workflows.policies import DEFAULT_POLICIES

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_events_go_out_in_order_while_the_export_goes_on(time_skipping_env):
    client = time_skipping_env.client
    # The first event (FAILED of attempt 1) is refused for its first 4 tries.
    stubs = StubActivities(failing_attempts={1}, refuse=lambda d, n: d.event.type == "export.failed" and n <= 4)
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
    client = time_skipping_env.client
    stubs = StubActivities(failing_attempts=set(), refuse=lambda d, n: True)
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
    window, backoff = DEFAULT_POLICIES.webhook_give_up_after, DEFAULT_POLICIES.webhook_retry.maximum_interval
    assert backoff is not None and window - backoff <= lived <= window + timedelta(minutes=1), lived
