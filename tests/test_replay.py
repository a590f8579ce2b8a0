"""Determinism guard: histories of finished runs replay against today's workflow code.

`tests/data/histories/*.json` are histories recorded from real runs of earlier
versions (regenerate with `DROPZONE_RECORD_HISTORIES=1 pytest tests/test_replay.py`
only when a change is meant to break compatibility, together with a versioning
plan for runs in flight). A change that makes the workflow issue different
commands for an old history fails here, before it can break running exports.

Two histories cover the late-ack poll (``workflow.patched(LATE_ACK_PATCH)``):
``ack_timeout_then_late_ack`` (recorded from today's code: ACK_TIMEOUT, then
the ERP's ack while the run waits for a retry) and
``ack_timeout_retried_before_late_ack_patch`` (recorded from the code before
the patch: ACK_TIMEOUT, a plain wait for the retry signal, a second attempt),
which must keep replaying as long as such runs may be open.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from dropzone.connection_config import config_to_storable, parse_connection_config
from starter.api import export_handle, retry_export, start_export
from tests.fixtures.temporal import TEST_DATA_CONVERTER
from tests.helpers import ack_body, error_body, make_draft, wait_for_state, write_ack_atomically
from workflows.export_order import ExportOrderWorkflow

pytestmark = pytest.mark.asyncio(loop_scope="session")

HISTORIES = Path(__file__).parent / "data" / "histories"
RECORD = os.environ.get("DROPZONE_RECORD_HISTORIES") == "1"


def recorded_histories() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


async def test_history_fixtures_exist():
    names = {p.stem for p in recorded_histories()}
    assert {
        "acked",
        "rejected_then_retried_acked",
        "sent_without_ack_path",
        "ack_timeout_then_late_ack",
        "ack_timeout_retried_before_late_ack_patch",
        # The ack listener (tests/test_ack_listener_replay.py): a run waiting on the
        # per-export poll (recorded mid-wait with the code before it) and runs on it.
        "waiting_on_ack_poll_before_ack_listener",
        "acked_via_ack_listener",
        "ack_timeout_then_late_ack_via_ack_listener",
        # A closing run's status callback as a local activity (tests/test_webhooks_queue.py):
        # delivered at once, and refused then sent by the retried activity.
        "webhook_sent_at_close",
        "webhook_at_close_refused_then_retried",
        # The SENT callback tried by deliver itself (tests/test_webhooks_with_delivery.py):
        # delivered (no patch, no command), and refused then sent through the queue.
        "webhook_sent_with_delivery",
        "webhook_sent_with_delivery_refused_then_queued",
    } <= names


@pytest.mark.parametrize("path", recorded_histories(), ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path):
    history = WorkflowHistory.from_json(f"erp-export-{path.stem}", path.read_text(encoding="utf-8"))
    replayer = Replayer(workflows=[ExportOrderWorkflow], data_converter=TEST_DATA_CONVERTER)
    await replayer.replay_workflow(history)


async def _finish_and_capture(client, did: str, name: str) -> None:  # type: ignore[no-untyped-def]
    handle = export_handle(client, did)
    history = await handle.fetch_history()
    replayer = Replayer(workflows=[ExportOrderWorkflow], data_converter=TEST_DATA_CONVERTER)
    await replayer.replay_workflow(history)
    if RECORD:
        HISTORIES.mkdir(parents=True, exist_ok=True)
        (HISTORIES / f"{name}.json").write_text(history.to_json(), encoding="utf-8")


async def test_fresh_histories_replay(client, run_worker, fs_target, target_without_acks):
    """Today's runs replay too (and are what DROPZONE_RECORD_HISTORIES=1 records)."""
    acked = make_draft(org_id=fs_target.org_id)
    retried = make_draft(org_id=fs_target.org_id)
    sent = make_draft(org_id=target_without_acks.org_id)
    async with run_worker(client) as queue:
        for draft, target in ((acked, fs_target), (retried, fs_target), (sent, target_without_acks)):
            await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)

        state = await wait_for_state(client, acked["draft_order_id"], lambda s: s.waiting_for == "ack")
        write_ack_atomically(fs_target.ack_dir, f"ack_{state.filename}", ack_body("SO-R1"))

        state = await wait_for_state(client, retried["draft_order_id"], lambda s: s.waiting_for == "ack")
        write_ack_atomically(fs_target.ack_dir, f"error_{state.filename}", error_body())
        await wait_for_state(client, retried["draft_order_id"], lambda s: s.status == "FAILED")
        await retry_export(client, retried["draft_order_id"])
        state = await wait_for_state(client, retried["draft_order_id"], lambda s: s.attempt == 2 and s.waiting_for == "ack")
        write_ack_atomically(fs_target.ack_dir, f"ack_{state.filename}", ack_body("SO-R2"))

        for draft in (acked, retried, sent):
            await asyncio.wait_for(export_handle(client, draft["draft_order_id"]).result(), 30)
    await _finish_and_capture(client, acked["draft_order_id"], "acked")
    await _finish_and_capture(client, retried["draft_order_id"], "rejected_then_retried_acked")
    await _finish_and_capture(client, sent["draft_order_id"], "sent_without_ack_path")


async def test_late_ack_history_replays(client, run_worker, fs_target, ledger):
    """ACK_TIMEOUT, then the ERP's ack while the run waits for a retry (the late-ack poll)."""
    config = parse_connection_config({**fs_target.config, "poll_interval_seconds": 1, "ack_timeout_seconds": 2})
    ledger.update_connection_config(fs_target.connection_id, config_to_storable(config))
    draft = make_draft(org_id=fs_target.org_id)
    did = draft["draft_order_id"]
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=fs_target.connection_id, draft=draft, task_queue=queue)
        state = await wait_for_state(client, did, lambda s: s.status == "FAILED" and s.waiting_for == "retry_signal")
        assert state.last_error is not None and state.last_error.code == "ACK_TIMEOUT"
        write_ack_atomically(fs_target.ack_dir, f"ack_{state.filename}", ack_body("SO-LATE"))
        result = await asyncio.wait_for(export_handle(client, did).result(), 30)
    assert result.status == "ACKED" and result.erp_order_id == "SO-LATE"
    await _finish_and_capture(client, did, "ack_timeout_then_late_ack")
