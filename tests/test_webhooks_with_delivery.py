"""The SENT callback tried by the deliver activity itself (``DeliverInput.sent_callback``).

Stub activities on the time-skipping server, as in tests/test_webhooks_queue.py: what
the workflow does with deliver's answer. The real try (a real receiver, the ledger
row, the pause after a failure) is in tests/test_webhooks.py.
"""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowHistory

from dropzone.webhooks import sent_event_id
from tests.stubs import StubActivities, run_to_close
from tests.test_webhooks_queue import HISTORIES, _replay_and_record, _scheduled, _workflow_tasks

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _event_types(history) -> list[int]:  # type: ignore[no-untyped-def]
    return [e.event_type for e in history.events]


async def test_a_sent_callback_delivered_with_the_file_costs_the_run_nothing(time_skipping_env):
    client = time_skipping_env.client
    with_callback = StubActivities(sends_with_delivery=True)
    result, history, _ = await run_to_close(client, with_callback)
    # A real run without a webhook, recorded by tests/test_replay.py.
    without = WorkflowHistory.from_json("w", (HISTORIES / "sent_without_ack_path.json").read_text(encoding="utf-8"))
    assert result.status == "SENT"
    assert [(t, a, ok) for t, a, ok, _ in with_callback.tries] == [("export.sent", 1, True)]
    assert with_callback.event_ids == [sent_event_id(result.export_id)]  # type: ignore[arg-type]
    assert _scheduled(history) == ["open_attempt", "render_and_store", "deliver"]
    # No patch marker, no search-attribute upsert for it, no local activity: the history of a
    # run without a webhook, event for event.
    assert not any(e.HasField("marker_recorded_event_attributes") for e in history.events)
    assert _workflow_tasks(history) == 4
    assert _event_types(history) == _event_types(without)
    await _replay_and_record(history, "webhook_sent_with_delivery")


async def test_a_sent_callback_refused_with_the_file_goes_on_through_the_queue_as_the_same_event(time_skipping_env):
    # Deliver's try and the local try at close are refused; the retried activity's first try delivers.
    stubs = StubActivities(sends_with_delivery=True, refuse=lambda d, n: n <= 2)
    result, history, _ = await run_to_close(time_skipping_env.client, stubs)
    assert result.status == "SENT"
    assert [(t, ok) for t, _, ok, _ in stubs.tries] == [("export.sent", False)] * 2 + [("export.sent", True)]
    # One event, three tries: the receiver sees one id (and one occurred_at) throughout.
    assert stubs.event_ids == [sent_event_id(result.export_id)] * 3  # type: ignore[arg-type]
    assert _scheduled(history) == ["open_attempt", "render_and_store", "deliver", "send_webhook"]
    await _replay_and_record(history, "webhook_sent_with_delivery_refused_then_queued")
