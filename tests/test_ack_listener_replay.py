"""Histories of the ack-listener path replay (and are what DROPZONE_RECORD_HISTORIES=1 records).

``acked_via_ack_listener`` and ``ack_timeout_then_late_ack_via_ack_listener`` in
tests/data/histories/ are replayed by tests/test_replay.py with every other
recorded history; the listener's own history (continue-as-new included) is
replayed here. The history of a run that was waiting on the per-export poll
before the listener existed (``waiting_on_ack_poll_before_ack_listener``,
recorded with that code) must keep replaying while such runs may be open.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Replayer

from dropzone.connection_config import config_to_storable, parse_connection_config
from starter.api import export_handle, start_export
from tests.conftest import Target
from tests.fixtures.temporal import TEST_DATA_CONVERTER
from tests.helpers import ack_body, make_draft, wait_for_state, write_ack_atomically
from tests.test_ack_listener import listener_state
from workflows import policies
from workflows.policies import Policies
from workflows.ack_listener import AckListenerWorkflow
from workflows.export_order import ExportOrderWorkflow

pytestmark = pytest.mark.asyncio(loop_scope="session")

HISTORIES = Path(__file__).parent / "data" / "histories"
RECORD = os.environ.get("DROPZONE_RECORD_HISTORIES") == "1"


async def test_the_history_of_a_run_waiting_on_the_old_poll_is_kept():
    text = (HISTORIES / "waiting_on_ack_poll_before_ack_listener.json").read_text(encoding="utf-8")
    # Mid-wait: its last event schedules the poll, nothing has closed it.
    assert "poll_ack" in text and "ensure_ack_listener" not in text
    assert "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED" in text and "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED" not in text


async def test_listener_path_histories_replay(client: Client, run_worker, fs_target: Target, ledger):
    acked, late = make_draft(org_id=fs_target.org_id), make_draft(org_id=fs_target.org_id)
    # A short listener history, so that the listener continues as new here too.
    async with run_worker(client, policies=Policies(listener_max_history_events=30)) as queue:
        await start_export(client, erp_connection_id=fs_target.connection_id, draft=acked, task_queue=queue)
        state = await wait_for_state(client, acked["draft_order_id"], lambda s: s.waiting_for == "ack")
        write_ack_atomically(fs_target.ack_dir, f"ack_{state.filename}", ack_body("SO-L1"))
        await asyncio.wait_for(export_handle(client, acked["draft_order_id"]).result(), 60)

        config = parse_connection_config({**fs_target.config, "poll_interval_seconds": 1, "ack_timeout_seconds": 2})
        ledger.update_connection_config(fs_target.connection_id, config_to_storable(config))
        await start_export(client, erp_connection_id=fs_target.connection_id, draft=late, task_queue=queue)
        failed = await wait_for_state(client, late["draft_order_id"], lambda s: s.status == "FAILED" and s.waiting_for == "retry_signal")
        write_ack_atomically(fs_target.ack_dir, f"ack_{failed.filename}", ack_body("SO-L-LATE"))
        result = await asyncio.wait_for(export_handle(client, late["draft_order_id"]).result(), 60)
        listener = await listener_state(client, fs_target.connection_id, lambda s: s.runs >= 2 and s.handed_over == 2)
        listener_history = await client.get_workflow_handle(policies.listener_id_for(fs_target.connection_id)).fetch_history()

    assert result.status == "ACKED" and result.erp_order_id == "SO-L-LATE"
    assert listener.handed_over == 2
    await Replayer(workflows=[AckListenerWorkflow], data_converter=TEST_DATA_CONVERTER).replay_workflow(listener_history)
    for draft, name in ((acked, "acked_via_ack_listener"), (late, "ack_timeout_then_late_ack_via_ack_listener")):
        history = await export_handle(client, draft["draft_order_id"]).fetch_history()
        text = history.to_json()  # (the patch marker's id is an encrypted payload)
        assert "ensure_ack_listener" in text and "poll_ack" not in text
        await Replayer(workflows=[ExportOrderWorkflow], data_converter=TEST_DATA_CONVERTER).replay_workflow(history)
        if RECORD:
            (HISTORIES / f"{name}.json").write_text(history.to_json(), encoding="utf-8")
