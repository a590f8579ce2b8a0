"""The retry as a Temporal Update (`retry_export`), end to end: dev server, real worker,
PostgreSQL, SeaweedFS and a filesystem dropzone.

The validator's answer comes back to the caller (``RetryRejected`` with the reason;
nothing is sent), an accepted retry returns the new attempt's number once it has
been opened, the `retry` signal of older clients still works, and the runs replay.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from dropzone.ledger import Ledger
from starter.api import RetryRejected, cancel_export, export_handle, retry_export, start_export
from tests.conftest import Target
from tests.fixtures.temporal import TEST_DATA_CONVERTER
from tests.helpers import ack_body, error_body, make_draft, wait_for_state, write_ack_atomically
from workflows.export_order import ExportOrderWorkflow

pytestmark = pytest.mark.asyncio(loop_scope="session")


def export_files(target: Target, draft_id: str) -> list[str]:
    return sorted(p.name for p in target.export_dir.glob(f"sales_order_{draft_id[:8]}_*.json"))


def attempts(ledger: Ledger, draft_id: str) -> list[tuple[int, str]]:
    return sorted((r.attempt, str(r.status)) for r in ledger.list_exports(draft_order_id=uuid.UUID(draft_id)))


async def replays(history: WorkflowHistory) -> None:
    await Replayer(workflows=[ExportOrderWorkflow], data_converter=TEST_DATA_CONVERTER).replay_workflow(history)


async def fail_first_attempt(client: Client, target: Target, queue: str) -> tuple[str, str]:
    """Start an export and make the ERP reject it: (draft id, first file name), FAILED and waiting."""
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
    first = await wait_for_state(client, did, lambda s: s.waiting_for == "ack")
    write_ack_atomically(target.ack_dir, f"error_{first.filename}", error_body())
    await wait_for_state(client, did, lambda s: s.status == "FAILED" and s.waiting_for == "retry_signal")
    return did, first.filename


async def test_update_retries_a_failed_export_and_returns_the_new_attempt(client: Client, run_worker, fs_target, ledger):
    target = fs_target
    async with run_worker(client) as queue:
        did, first_file = await fail_first_attempt(client, target, queue)
        attempt = await retry_export(client, did, reason="customer fixed", requested_by="ops@example.com")
        assert attempt == 2
        # The Update returned once the attempt was opened: its row exists already.
        assert attempts(ledger, did)[1][0] == 2
        second = await wait_for_state(client, did, lambda s: s.attempt == 2 and s.waiting_for == "ack")
        assert second.filename != first_file
        assert export_files(target, did) == sorted([first_file, second.filename])
        # While attempt 2 runs, a second retry is refused by the validator, saying why.
        with pytest.raises(RetryRejected) as running:
            await retry_export(client, did)
        assert "SENT, not FAILED: still running (attempt 2, waiting for ack)" in running.value.reason
        write_ack_atomically(target.ack_dir, f"ack_{second.filename}", ack_body("SO-U2"))
        result = await asyncio.wait_for(export_handle(client, did).result(), 30)
        history = await export_handle(client, did).fetch_history()
    assert result.status == "ACKED" and result.attempt == 2 and result.erp_order_id == "SO-U2"
    assert attempts(ledger, did) == [(1, "FAILED"), (2, "ACKED")]
    accepted = [
        e for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        and e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name == "retry_export"
    ]
    # One accepted retry: the rejected one left no trace in the history.
    assert len(accepted) == 1
    await replays(history)


async def test_rejections_come_back_to_the_caller_and_send_nothing(client: Client, run_worker, fs_target, ledger):
    target = fs_target
    async with run_worker(client) as queue:
        draft = make_draft(org_id=target.org_id)
        did = draft["draft_order_id"]
        await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
        state = await wait_for_state(client, did, lambda s: s.waiting_for == "ack")
        with pytest.raises(RetryRejected) as waiting:
            await retry_export(client, did)
        assert "is SENT, not FAILED: still running" in waiting.value.reason

        write_ack_atomically(target.ack_dir, f"ack_{state.filename}", ack_body("SO-ACK"))
        await asyncio.wait_for(export_handle(client, did).result(), 30)
        # ACKED and closed: the reason still names the status and the ERP's order.
        with pytest.raises(RetryRejected) as acked:
            await retry_export(client, did)
        assert "ACKED, not FAILED (ERP order SO-ACK)" in acked.value.reason
        assert export_files(target, did) == [state.filename]
        assert attempts(ledger, did) == [(1, "ACKED")]

        # Cancelled while FAILED: the run closes, and says so.
        cancelled, _ = await fail_first_attempt(client, target, queue)
        await cancel_export(client, cancelled, reason="given up")
        await asyncio.wait_for(export_handle(client, cancelled).result(), 30)
        with pytest.raises(RetryRejected) as closed:
            await retry_export(client, cancelled)
        assert "run has closed (COMPLETED)" in closed.value.reason
        assert attempts(ledger, cancelled) == [(1, "FAILED")]


async def test_retry_signal_of_an_old_client_still_works(client: Client, run_worker, fs_target, ledger):
    """An older backend sends the `retry` signal by name with plain JSON, as the README showed."""
    target = fs_target
    async with run_worker(client) as queue:
        did, first_file = await fail_first_attempt(client, target, queue)
        handle = client.get_workflow_handle(f"erp-export-{did}")
        await handle.signal("retry", {"reason": "customer fixed", "requested_by": "legacy-backend"})
        second = await wait_for_state(client, did, lambda s: s.attempt == 2 and s.waiting_for == "ack")
        # A signal to an export that is not FAILED is still ignored, silently.
        await handle.signal("retry", {})
        write_ack_atomically(target.ack_dir, f"ack_{second.filename}", ack_body("SO-SIG"))
        result = await asyncio.wait_for(export_handle(client, did).result(), 30)
        history = await export_handle(client, did).fetch_history()
    assert result.status == "ACKED" and result.attempt == 2
    assert attempts(ledger, did) == [(1, "FAILED"), (2, "ACKED")]
    assert export_files(target, did) == sorted([first_file, second.filename])
    await replays(history)


async def test_cli_retry_prints_the_attempt_or_the_reason(client: Client, run_worker, fs_target, dropzone_cli_in_process):
    target = fs_target
    async with run_worker(client) as queue:
        env = {"DROPZONE_TASK_QUEUE": queue}
        did, _ = await fail_first_attempt(client, target, queue)
        done = await dropzone_cli_in_process("retry", did, "--json", env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"draft_order_id": did, "verdict": "retried", "attempt": 2}
        await wait_for_state(client, did, lambda s: s.attempt == 2 and s.waiting_for == "ack")
        again = await dropzone_cli_in_process("retry", did, env=env)
        assert again.returncode == 1
        assert f"export of draft {did} not retried: the export is SENT, not FAILED: still running" in again.stderr
        assert "Traceback" not in again.stderr + again.stdout
