"""The workflow's status-callback queue on the time-skipping server, with stub activities.

Only the ordering and give-up logic of ``workflows/webhook_queue.py`` is under test
here (the real activities are in tests/test_webhooks.py): events of one export are
sent one at a time in order, the export goes on while they are retried, and a
receiver that never answers is given up after the production window
(``Policies.webhook_give_up_after``, a day) without the history growing per try.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.worker import Replayer

from dropzone.contracts import ExportRequest, WebhookDeliveryOutcome
from starter.api import retry_export
from tests.fixtures.temporal import TEST_DATA_CONVERTER
from tests.helpers import make_draft, wait_for_state
from tests.stubs import StubActivities, run_to_close, stub_worker
from workflows.export_order import ExportOrderWorkflow
from workflows.policies import DEFAULT_POLICIES, Policies

pytestmark = pytest.mark.asyncio(loop_scope="session")

HISTORIES = Path(__file__).parent / "data" / "histories"
RECORD = os.environ.get("DROPZONE_RECORD_HISTORIES") == "1"


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
    stubs = StubActivities(failing_attempts=set(), refuse=lambda d, n: True)
    result, history, description = await run_to_close(time_skipping_env.client, stubs)
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


async def _closed_history(client, stubs: StubActivities, policies: Policies = DEFAULT_POLICIES):  # type: ignore[no-untyped-def]
    result, history, _ = await run_to_close(client, stubs, policies=policies)
    assert result.status == "SENT"
    return history


def _scheduled(history) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]


def _workflow_tasks(history) -> int:  # type: ignore[no-untyped-def]
    return sum(e.HasField("workflow_task_completed_event_attributes") for e in history.events)


async def _replay_and_record(history, name: str) -> None:  # type: ignore[no-untyped-def]
    await Replayer(workflows=[ExportOrderWorkflow], data_converter=TEST_DATA_CONVERTER).replay_workflow(history)
    if RECORD:
        (HISTORIES / f"{name}.json").write_text(history.to_json(), encoding="utf-8")


async def test_a_closing_runs_callback_is_a_local_activity_in_its_last_workflow_task(time_skipping_env):
    """SENT with nothing left to wait for: the callback goes out in the run's last workflow task."""
    stubs = StubActivities()
    history = await _closed_history(time_skipping_env.client, stubs)
    assert [(t, a, ok) for t, a, ok, _ in stubs.tries] == [("export.sent", 1, True)]
    assert _scheduled(history) == ["open_attempt", "render_and_store", "deliver"]  # no send_webhook task
    # One per activity and the first: the last one (after deliver) sends the callback and closes.
    assert _workflow_tasks(history) == 4
    markers = [e.marker_recorded_event_attributes.marker_name for e in history.events if e.HasField("marker_recorded_event_attributes")]
    # WEBHOOK_PATCH, AT_CLOSE_PATCH (their ids are encrypted payloads) and the local activity's result.
    assert sorted(markers) == ["core_local_activity", "core_patch", "core_patch"]
    await _replay_and_record(history, "webhook_sent_at_close")


async def test_a_closing_runs_callback_refused_goes_on_as_the_retried_activity(time_skipping_env):
    # The local try and the activity's first try are refused; its second try delivers.
    stubs = StubActivities(refuse=lambda d, n: n <= 2)
    history = await _closed_history(time_skipping_env.client, stubs)
    assert [(t, ok) for t, _, ok, _ in stubs.tries] == [("export.sent", False), ("export.sent", False), ("export.sent", True)]
    assert _scheduled(history) == ["open_attempt", "render_and_store", "deliver", "send_webhook"]
    completed = [e for e in history.events if e.HasField("activity_task_completed_event_attributes")]
    outcome = TEST_DATA_CONVERTER.payload_converter.from_payloads(
        (await TEST_DATA_CONVERTER.payload_codec.decode(completed[-1].activity_task_completed_event_attributes.result.payloads)),
        [WebhookDeliveryOutcome],
    )[0]
    assert outcome.delivery_attempts == 3  # counted from the local try
    await _replay_and_record(history, "webhook_at_close_refused_then_retried")


async def test_without_the_local_try_a_closing_runs_callback_is_an_activity(time_skipping_env):
    stubs = StubActivities()
    history = await _closed_history(time_skipping_env.client, stubs, Policies(webhook_local_at_close=False))
    assert [(t, ok) for t, _, ok, _ in stubs.tries] == [("export.sent", True)]
    assert _scheduled(history) == ["open_attempt", "render_and_store", "deliver", "send_webhook"]
    assert _workflow_tasks(history) == 5  # one more: after send_webhook
