"""ExportOrderWorkflow end to end: dev server, real worker, PostgreSQL, SeaweedFS,
and a real dropzone (filesystem, OpenSSH sftp, asyncssh sftp)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from dropzone.export_v1 import render_export, validate_draft
from starter.api import export_handle, retry_export, start_export
from tests.helpers import (
    ack_body,
    error_body,
    eventually,
    make_draft,
    sha256_of,
    wait_for_state,
    write_ack_atomically,
)
from workflows import policies
from workflows.ack_listener import AckListenerWorkflow

pytestmark = pytest.mark.asyncio(loop_scope="session")


def sent_or_later(state):  # type: ignore[no-untyped-def]
    return state.status in ("SENT", "ACKED", "FAILED")


async def test_full_run_delivers_stores_and_acks(client: Client, run_worker, target, ledger, object_store):
    draft = make_draft(org_id=target.org_id)
    expected = render_export(validate_draft(draft))
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
        state = await wait_for_state(client, draft["draft_order_id"], lambda s: s.status == "SENT" and s.waiting_for == "ack")

        final = target.export_dir / state.filename
        assert final.read_bytes() == expected
        assert not list(target.export_dir.glob("*.tmp"))
        assert state.filename.startswith(f"sales_order_{draft['draft_order_id'][:8]}_")

        row = ledger.get_export(state.export_id)
        assert row.status == "SENT" and row.sent_at is not None
        assert row.sha256 == sha256_of(expected) and row.size_bytes == len(expected)
        head = object_store.head(row.export_storage_key)
        assert head is not None and head.sha256 == row.sha256 and head.size == len(expected)
        assert row.export_storage_key == f"exports/{target.org_id}/{state.filename}"

        write_ack_atomically(target.ack_dir, f"ack_{state.filename}", ack_body("SO-1"))
        state = await wait_for_state(client, draft["draft_order_id"], lambda s: s.status == "ACKED")
        assert state.erp_order_id == "SO-1"
        row = ledger.get_export(state.export_id)
        assert row.status == "ACKED" and row.erp_order_id == "SO-1" and row.acked_at is not None
        # The listener hands the answer to the run, and only then moves the file.
        moved = target.ack_dir / "processed" / f"ack_{state.filename}"
        await eventually(moved.is_file, what=f"{moved} to appear")
        assert not (target.ack_dir / f"ack_{state.filename}").exists()


async def test_error_ack_fails_and_retry_makes_a_second_attempt(client: Client, run_worker, fs_target, ledger):
    target = fs_target
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
        first = await wait_for_state(client, did, lambda s: s.waiting_for == "ack")
        write_ack_atomically(target.ack_dir, f"error_{first.filename}", error_body())
        failed = await wait_for_state(client, did, lambda s: s.status == "FAILED")
        assert failed.last_error is not None and failed.last_error.code == "INVALID_CUSTOMER"
        row1 = ledger.get_export(first.export_id)
        assert row1.status == "FAILED" and row1.error_json["code"] == "INVALID_CUSTOMER"

        await retry_export(client, did, reason="customer fixed")
        second = await wait_for_state(client, did, lambda s: s.attempt == 2 and s.waiting_for == "ack")
        assert second.filename != first.filename
        assert (target.export_dir / second.filename).is_file()
        assert (target.export_dir / first.filename).is_file()
        write_ack_atomically(target.ack_dir, f"ack_{second.filename}", ack_body("SO-2"))
        await wait_for_state(client, did, lambda s: s.status == "ACKED")

    rows = sorted(ledger.list_exports(draft_order_id=uuid.UUID(did)), key=lambda r: r.attempt)
    assert [(r.attempt, r.status) for r in rows] == [(1, "FAILED"), (2, "ACKED")]
    assert rows[0].updated_at == row1.updated_at and rows[0].error_json == row1.error_json


async def test_malformed_ack_goes_to_error_folder_and_is_not_acked(client: Client, run_worker, fs_target, ledger):
    target = fs_target
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
        state = await wait_for_state(client, did, lambda s: s.waiting_for == "ack")
        write_ack_atomically(target.ack_dir, f"ack_{state.filename}", b'{"status": "ACKED", "erp_ord')
        await eventually(
            (target.ack_dir / "error" / f"ack_{state.filename}").exists, timeout=15, what="the malformed ack moved to error/"
        )
        assert ledger.get_export(state.export_id).status == "SENT"
        # A good ack afterwards is still accepted.
        write_ack_atomically(target.ack_dir, f"ack_{state.filename}", ack_body("SO-3"))
        state = await wait_for_state(client, did, lambda s: s.status == "ACKED")
        assert state.erp_order_id == "SO-3"


async def test_same_draft_started_twice_gives_one_run_and_one_file(client: Client, run_worker, fs_target, ledger):
    target = fs_target
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    async with run_worker(client) as queue:
        first, second = await asyncio.gather(
            start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue),
            start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue),
        )
        assert first.workflow_id == second.workflow_id
        assert first.run_id == second.run_id
        # Temporal's own answer to each start says which one opened the run.
        assert sorted([first.started_new, second.started_new]) == [False, True]
        state = await wait_for_state(client, did, lambda s: s.waiting_for == "ack")
        again = await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
        assert again.run_id == first.run_id and not again.started_new
        write_ack_atomically(target.ack_dir, f"ack_{state.filename}", ack_body())
        await wait_for_state(client, did, lambda s: s.status == "ACKED")
        # After the run has closed, a plain start does not export again.
        closed = await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
        assert not closed.started_new
    assert len(ledger.list_exports(draft_order_id=uuid.UUID(did))) == 1
    assert len(list(target.export_dir.glob(f"sales_order_{did[:8]}_*.json"))) == 1


async def test_no_ack_path_ends_sent(client: Client, run_worker, target_without_acks, ledger):
    target = target_without_acks
    draft = make_draft(org_id=target.org_id)
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
        result = await asyncio.wait_for(export_handle(client, draft["draft_order_id"]).result(), 30)
    assert result.status == "SENT"
    assert ledger.get_export(result.export_id).status == "SENT"


async def test_search_attributes_follow_the_status(client: Client, run_worker, fs_target):
    target = fs_target
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
        state = await wait_for_state(client, did, lambda s: s.waiting_for == "ack")
        write_ack_atomically(target.ack_dir, f"error_{state.filename}", error_body())
        await wait_for_state(client, did, lambda s: s.status == "FAILED")
        async def listed() -> list[Any]:
            return [w async for w in client.list_workflows(f'DraftOrderId="{did}" AND ExportStatus="FAILED"')]

        found = await eventually(listed, timeout=15, every=0.3, what="the FAILED run in visibility")
        assert len(found) == 1 and found[0].id == f"erp-export-{did}"
        desc = await client.get_workflow_handle(f"erp-export-{did}").describe()
        assert await desc.static_summary() == "PO-12345 · acme · 2 lines"


async def test_invalid_inline_draft_fails_run_naming_fields(client: Client, run_worker, fs_target, ledger):
    """A backend in another language can send a bad draft: the run fails, nothing is written."""
    target = fs_target
    from dropzone.contracts import ExportRequest
    from workflows.export_order import ExportOrderWorkflow

    draft = make_draft(org_id=target.org_id)
    draft["lines"][0]["qty"] = -1
    del draft["customer"]["name"]
    async with run_worker(client) as queue:
        handle = await client.start_workflow(
            ExportOrderWorkflow.run,
            ExportRequest(erp_connection_id=target.connection_id, draft=draft),
            id=f"erp-export-{draft['draft_order_id']}",
            task_queue=queue,
        )
        with pytest.raises(Exception) as info:
            await asyncio.wait_for(handle.result(), 30)
    cause = info.value.cause  # type: ignore[attr-defined]
    assert cause.type == "INVALID_DRAFT"
    assert "lines[0].qty" in cause.message and "customer.name" in cause.message
    assert ledger.list_exports(draft_order_id=uuid.UUID(draft["draft_order_id"])) == []


async def test_ack_wait_adds_no_history_per_poll(client: Client, run_worker, fs_target):
    target = fs_target
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
        await wait_for_state(client, did, lambda s: s.waiting_for == "ack")
        handle = client.get_workflow_handle(f"erp-export-{did}")
        before = len((await handle.fetch_history()).events)
        await asyncio.sleep(3.5)  # several 1-second polls
        after = len((await handle.fetch_history()).events)
        desc = await handle.describe()
        listener = await client.get_workflow_handle(policies.listener_id_for(target.connection_id)).query(
            AckListenerWorkflow.state
        )
    assert after == before
    # Not even an activity of its own: the connection's ack listener looks, once per interval.
    assert list(desc.raw_description.pending_activities) == []
    assert listener.listings >= 3 and listener.last_error is None


async def test_activity_types_in_history(client: Client, run_worker, target_without_acks):
    target = target_without_acks
    draft = make_draft(org_id=target.org_id)
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
        handle = client.get_workflow_handle(f"erp-export-{draft['draft_order_id']}")
        await asyncio.wait_for(handle.result(), 30)
        history = await handle.fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert scheduled == ["open_attempt", "render_and_store", "deliver"]


async def test_ack_timeout_on_time_skipping_server(time_skipping_env, run_worker, fs_target, ledger):
    """Waiting ten minutes for an ack takes seconds; the export ends FAILED with ACK_TIMEOUT."""
    from dropzone.connection_config import config_to_storable, parse_connection_config

    target = fs_target
    config = parse_connection_config({**target.config, "poll_interval_seconds": 60, "ack_timeout_seconds": 600})
    ledger.update_connection_config(target.connection_id, config_to_storable(config))
    client = time_skipping_env.client
    draft = make_draft(org_id=target.org_id)
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
        await wait_for_state(client, draft["draft_order_id"], lambda s: s.waiting_for == "ack")
        await time_skipping_env.sleep(timedelta(seconds=700))  # past the ack timeout, in no real time
        state = await wait_for_state(client, draft["draft_order_id"], lambda s: s.status == "FAILED")
        history = await export_handle(client, draft["draft_order_id"]).fetch_history()
    assert state.last_error is not None and state.last_error.code == "ACK_TIMEOUT"
    row = ledger.get_export(state.export_id)
    assert row.status == "FAILED" and row.error_json["code"] == "ACK_TIMEOUT"
    assert len(history.events) < 60
