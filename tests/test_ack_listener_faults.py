"""The ack listener when things go wrong: a dropzone it cannot list, a move that fails after
the hand-over, stale temporary files. Real servers; the kill -9 between the hand-over
and the move is in tests/test_chaos_kill.py (kill point ``before_ack_moved``)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client

from dropzone import errors
from dropzone.ledger import Ledger
from dropzone.delivery import Dropzone
from starter.api import export_handle, start_export
from tests.conftest import Target
from tests.helpers import ack_body, make_draft, wait_for_state, write_ack_atomically
from tests.test_ack_listener import listener_state
from workflows import policies
from workflows.policies import DEFAULT_POLICIES, Policies

pytestmark = pytest.mark.asyncio(loop_scope="session")

OLDER_THAN_DELIVERY = DEFAULT_POLICIES.deliver_timeout.total_seconds() + 600


async def test_a_listener_that_cannot_list_shows_why_and_its_exports_keep_waiting(
    client: Client, run_worker, fs_target: Target, ledger: Ledger, dropzone_cli_in_process
):
    draft = make_draft(org_id=fs_target.org_id)
    did = draft["draft_order_id"]
    away = fs_target.ack_dir.with_name("ack-away")
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=fs_target.connection_id, draft=draft, task_queue=queue)
        waiting = await wait_for_state(client, did, lambda s: s.waiting_for == "ack")
        await listener_state(client, fs_target.connection_id, lambda s: s.listings >= 1)

        fs_target.ack_dir.rename(away)  # the ERP's side removed it (as a revoked permission would)
        broken = await listener_state(client, fs_target.connection_id, lambda s: s.last_error is not None)
        shown = await dropzone_cli_in_process("acks", "listeners", "--connection", str(fs_target.connection_id), "--json")
        table = await dropzone_cli_in_process("acks", "listeners")
        details = await _current_details(client, fs_target)
        still = await wait_for_state(client, did, lambda s: True)

        away.rename(fs_target.ack_dir)
        write_ack_atomically(fs_target.ack_dir, f"ack_{waiting.filename}", ack_body("SO-AFTER-OUTAGE"))
        result = await asyncio.wait_for(export_handle(client, did).result(), 60)
        healed = await listener_state(client, fs_target.connection_id, lambda s: s.last_error is None and s.handed_over == 1)

    assert broken.last_error is not None and broken.last_error.code == "MISSING_DIRECTORY"
    assert str(fs_target.ack_dir) in broken.last_error.message
    assert shown.returncode == 0, shown.stderr
    [listed] = json.loads(shown.stdout)
    assert listed["last_error"]["code"] == "MISSING_DIRECTORY" and listed["erp_connection_id"] == str(fs_target.connection_id)
    assert table.returncode == 0 and str(fs_target.connection_id) in table.stdout and "MISSING_DIRECTORY" in table.stdout
    assert "CANNOT LIST: MISSING_DIRECTORY" in details
    assert (still.status, still.waiting_for) == ("SENT", "ack")  # waiting, not failed
    assert result.status == "ACKED" and result.erp_order_id == "SO-AFTER-OUTAGE"  # type: ignore[attr-defined]
    assert healed.last_error_at is not None


async def _current_details(client: Client, target: Target) -> str:
    """The listener's current details, as the UI shows them (read through the SDK's metadata query)."""
    metadata = await client.get_workflow_handle(policies.listener_id_for(target.connection_id)).query(
        "__temporal_workflow_metadata", result_type=WorkflowMetadata
    )
    return metadata.current_details


async def test_a_move_that_fails_after_the_hand_over_is_finished_next_look_recorded_once_moved_once(
    client: Client, run_worker, fs_target: Target, ledger: Ledger, monkeypatch
):
    real_move = Dropzone.move_ack
    failed: list[str] = []

    def move_fails_once(self, name, folder):  # type: ignore[no-untyped-def]
        if folder == "processed" and not failed:
            failed.append(name)  # the answer is recorded and handed over by now
            raise errors.DropzoneUnavailableError("connection dropped before the move")
        return real_move(self, name, folder)

    monkeypatch.setattr(Dropzone, "move_ack", move_fails_once)
    draft = make_draft(org_id=fs_target.org_id)
    did = draft["draft_order_id"]
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=fs_target.connection_id, draft=draft, task_queue=queue)
        waiting = await wait_for_state(client, did, lambda s: s.waiting_for == "ack")
        write_ack_atomically(fs_target.ack_dir, f"ack_{waiting.filename}", ack_body("SO-ONCE"))
        result = await asyncio.wait_for(export_handle(client, did).result(), 60)
        moved = await listener_state(client, fs_target.connection_id, lambda s: not (fs_target.ack_dir / f"ack_{waiting.filename}").exists())
        history = await export_handle(client, did).fetch_history()

    assert failed == [f"ack_{waiting.filename}"]
    assert result.status == "ACKED" and result.erp_order_id == "SO-ONCE"  # type: ignore[attr-defined]
    row = ledger.get_export(waiting.export_id)
    assert (row.status, row.erp_order_id) == ("ACKED", "SO-ONCE")
    assert [p.name for p in (fs_target.ack_dir / "processed").iterdir()] == [f"ack_{waiting.filename}"]
    assert not (fs_target.ack_dir / "error").exists() and moved.rejected == 0
    assert ledger.list_ack_rejections(connection_id=fs_target.connection_id) == []
    # Handed over once as far as the run is concerned: one accepted Update changed it.
    updates = [e for e in history.events if e.HasField("workflow_execution_update_completed_event_attributes")]
    assert 1 <= len(updates) <= 2


async def test_stale_tmp_files_of_finished_attempts_are_removed_and_counted(
    client: Client, run_worker, fs_target: Target, ledger: Ledger
):
    draft = make_draft(org_id=fs_target.org_id)
    did = draft["draft_order_id"]
    async with run_worker(client, policies=Policies(stale_tmp_sweep_interval=timedelta(seconds=1))) as queue:
        await start_export(client, erp_connection_id=fs_target.connection_id, draft=draft, task_queue=queue)
        waiting = await wait_for_state(client, did, lambda s: s.waiting_for == "ack")  # its row is SENT
        stale = _tmp(fs_target.export_dir, f"{waiting.filename}.r1xdeadbeef.tmp", age=OLDER_THAN_DELIVERY)
        recent = _tmp(fs_target.export_dir, f"{waiting.filename}.r2xcafe.tmp", age=60)
        unknown = _tmp(fs_target.export_dir, "sales_order_0badc0de_20250101_000000_0badc0de.json.r1xab.tmp", age=OLDER_THAN_DELIVERY)
        foreign = _tmp(fs_target.export_dir, "somebody-elses.tmp", age=OLDER_THAN_DELIVERY)
        swept = await listener_state(client, fs_target.connection_id, lambda s: s.stale_tmp_removed >= 2)
        write_ack_atomically(fs_target.ack_dir, f"ack_{waiting.filename}", ack_body("SO-TMP"))
        await asyncio.wait_for(export_handle(client, did).result(), 60)

    assert not stale.exists() and not unknown.exists()  # ours, old, their attempt no longer running
    assert recent.exists() and foreign.exists()  # younger than the delivery timeout; not our name
    assert swept.stale_tmp_removed == 2 and swept.last_tmp_sweep_at is not None
    assert (fs_target.export_dir / waiting.filename).is_file()


def _tmp(directory: Path, name: str, *, age: float) -> Path:
    path = directory / name
    path.write_bytes(b"partial upload")
    os.utime(path, (time.time() - age, time.time() - age))
    return path
