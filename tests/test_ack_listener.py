"""One ack listener per connection (workflows/ack_listener.py), end to end on the dev server.

Real worker, PostgreSQL ledger, SeaweedFS, filesystem dropzones. What is
asserted is what an operator or the ERP would see: rows, files in ack_path,
processed/ and error/, rejection records, histories and the listener's state.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from dropzone.contracts import ListenerState
from dropzone.ledger import Ledger
from dropzone.transports.filesystem import FilesystemTransport
from starter.api import cancel_export, export_handle, start_export
from tests.conftest import Target, make_target
from tests.helpers import ack_body, error_body, eventually, make_draft, wait_for_state, write_ack_atomically
from workflows import policies
from workflows.policies import Policies
from workflows.ack_listener import AckListenerWorkflow

pytestmark = pytest.mark.asyncio(loop_scope="session")

WAITING = 12
AN_HOUR_AGO = 3600.0
# Events before the listener continues as new in the burst test: about two looks.
BURST_BOUND = 15


async def listener_state(
    client: Client, connection_id: uuid.UUID, predicate: Callable[[ListenerState], bool], *, timeout: float = 45.0
) -> ListenerState:
    """The connection's listener state once ``predicate`` holds (it may not have started yet)."""
    handle = client.get_workflow_handle(policies.listener_id_for(connection_id))
    seen: list[ListenerState] = []

    async def reached() -> ListenerState | None:
        seen.append(await handle.query(AckListenerWorkflow.state))
        return seen[-1] if predicate(seen[-1]) else None

    return await eventually(
        reached, timeout=timeout, every=0.2, ignoring=(Exception,),  # not started yet
        what=lambda: f"listener of {connection_id} reaching the expected state; last: {seen[-1:]}",
    )


def write_old(ack_dir: Path, name: str, body: dict) -> Path:  # type: ignore[type-arg]
    """An ack the ERP wrote an hour ago (older than the unmatched-ack grace)."""
    path = write_ack_atomically(ack_dir, name, body)
    os.utime(path, (time.time() - AN_HOUR_AGO, time.time() - AN_HOUR_AGO))
    return path


async def finish(client: Client, draft: dict) -> object:  # type: ignore[type-arg]
    return await asyncio.wait_for(export_handle(client, draft["draft_order_id"]).result(), 60)


async def test_waiting_costs_one_listing_per_interval_and_no_stat_per_export(
    client: Client, run_worker, fs_target: Target, ledger: Ledger, monkeypatch
):
    calls: Counter[str] = Counter()
    for name in ("listdir", "stat", "read_prefix"):
        real = getattr(FilesystemTransport, name)

        def counting(self, *args, _real=real, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            if self.ack_path == str(fs_target.ack_dir):
                calls[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(FilesystemTransport, name, counting)
    drafts = [make_draft(org_id=fs_target.org_id) for _ in range(WAITING)]
    async with run_worker(client) as queue:
        for draft in drafts:
            await start_export(client, erp_connection_id=fs_target.connection_id, draft=draft, task_queue=queue)
        states = [await wait_for_state(client, d["draft_order_id"], lambda s: s.waiting_for == "ack") for d in drafts]
        first = await listener_state(client, fs_target.connection_id, lambda s: s.listings >= 1)
        calls.clear()
        handles = [export_handle(client, d["draft_order_id"]) for d in drafts]
        before = [len((await h.fetch_history()).events) for h in handles]
        seen = await listener_state(client, fs_target.connection_id, lambda s: s.listings >= first.listings + 4)
        listed = Counter(calls)
        after = [len((await h.fetch_history()).events) for h in handles]
        pending = [len((await h.describe()).raw_description.pending_activities) for h in handles]

        # Now the ERP answers all of them at once: one look takes them all.
        for state in states:
            write_ack_atomically(fs_target.ack_dir, f"ack_{state.filename}", ack_body(f"SO-{state.attempt}-{state.filename[12:20]}"))
        results = [await finish(client, d) for d in drafts]
        done = await listener_state(client, fs_target.connection_id, lambda s: s.handed_over >= WAITING)

    listings = seen.listings - first.listings
    # One LIST per interval for twelve waiting exports (±1: the counter and the query race), nothing else.
    assert listings <= listed["listdir"] <= listings + 1, (listed, listings)
    assert listed["stat"] == 0 and listed["read_prefix"] == 0, listed
    assert after == before and pending == [0] * WAITING  # the exports themselves do nothing while they wait
    assert [r.status for r in results] == ["ACKED"] * WAITING  # type: ignore[attr-defined]
    assert sorted(p.name for p in (fs_target.ack_dir / "processed").iterdir()) == sorted(f"ack_{s.filename}" for s in states)
    assert done.rejected == 0 and done.recorded_without_run == 0 and done.last_error is None
    assert ledger.list_ack_rejections(connection_id=fs_target.connection_id) == []


async def test_two_connections_side_by_side_and_another_connections_ack_is_never_applied(
    client: Client, run_worker, request, ledger: Ledger, tmp_path: Path
):
    a, b = make_target("filesystem", request, ledger, tmp_path), make_target("filesystem", request, ledger, tmp_path)
    draft_a, draft_b = make_draft(org_id=a.org_id), make_draft(org_id=b.org_id)
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=a.connection_id, draft=draft_a, task_queue=queue)
        await start_export(client, erp_connection_id=b.connection_id, draft=draft_b, task_queue=queue)
        wait_a = await wait_for_state(client, draft_a["draft_order_id"], lambda s: s.waiting_for == "ack")
        wait_b = await wait_for_state(client, draft_b["draft_order_id"], lambda s: s.waiting_for == "ack")

        # B's ERP answers A's export (it learnt the file name): B's listener only knows B's exports.
        forged = write_old(b.ack_dir, f"ack_{wait_a.filename}", ack_body("SO-FORGED-BY-B"))
        await listener_state(client, b.connection_id, lambda s: s.rejected >= 1)
        still = await wait_for_state(client, draft_a["draft_order_id"], lambda s: True)

        write_ack_atomically(a.ack_dir, f"ack_{wait_a.filename}", ack_body("SO-A"))
        write_ack_atomically(b.ack_dir, f"error_{wait_b.filename}", error_body("INVALID_CUSTOMER"))
        result_a = await finish(client, draft_a)
        state_b = await wait_for_state(client, draft_b["draft_order_id"], lambda s: s.status == "FAILED")
        listener_a = await listener_state(client, a.connection_id, lambda s: s.handed_over == 1)
        listener_b = await listener_state(client, b.connection_id, lambda s: s.handed_over == 1)
        await cancel_export(client, draft_b["draft_order_id"], reason="test done")

    assert (still.status, still.waiting_for, still.erp_order_id) == ("SENT", "ack", None)
    assert not forged.exists() and (b.ack_dir / "error" / forged.name).is_file()
    assert not (a.ack_dir / "error").exists()
    [rejection] = ledger.list_ack_rejections(connection_id=b.connection_id)
    assert rejection.export_id is None and "no export in the ledger wrote for this connection" in rejection.reason
    assert result_a.status == "ACKED" and result_a.erp_order_id == "SO-A"  # type: ignore[attr-defined]
    assert ledger.get_export(wait_a.export_id).erp_order_id == "SO-A"
    assert state_b.last_error is not None and state_b.last_error.code == "INVALID_CUSTOMER"
    assert ledger.list_ack_rejections(connection_id=a.connection_id) == []
    assert (listener_a.rejected, listener_b.rejected) == (0, 1)
    assert listener_a.erp_connection_id == a.connection_id and listener_b.erp_connection_id == b.connection_id


async def test_unmatched_ack_on_an_otherwise_idle_connection_goes_to_error_and_is_recorded(
    client: Client, run_worker, fs_target: Target, ledger: Ledger
):
    draft = make_draft(org_id=fs_target.org_id)
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=fs_target.connection_id, draft=draft, task_queue=queue)
        state = await wait_for_state(client, draft["draft_order_id"], lambda s: s.waiting_for == "ack")
        write_ack_atomically(fs_target.ack_dir, f"ack_{state.filename}", ack_body("SO-ONLY"))
        await finish(client, draft)
        # Nothing waits on this connection any more; its listener still looks.
        stray = write_old(fs_target.ack_dir, "ack_sales_order_deadbeef_20250101_000000_deadbeef.json", ack_body("SO-STRAY"))
        idle = await listener_state(client, fs_target.connection_id, lambda s: s.rejected == 1)

    assert not stray.exists() and (fs_target.ack_dir / "error" / stray.name).is_file()
    [rejection] = ledger.list_ack_rejections(connection_id=fs_target.connection_id)
    assert rejection.ack_file == stray.name and rejection.export_id is None
    assert idle.handed_over == 1 and idle.last_error is None


async def test_listener_continues_as_new_in_the_middle_of_a_burst(
    client: Client, run_worker, fs_target: Target, ledger: Ledger
):
    drafts = [make_draft(org_id=fs_target.org_id) for _ in range(WAITING)]
    # A handful of looks per run.
    async with run_worker(client, policies=Policies(listener_max_history_events=BURST_BOUND)) as queue:
        for draft in drafts:
            await start_export(client, erp_connection_id=fs_target.connection_id, draft=draft, task_queue=queue)
        states = [await wait_for_state(client, d["draft_order_id"], lambda s: s.waiting_for == "ack") for d in drafts]
        # The ERP answers one after the other, over many looks and several runs of the listener.
        for n, state in enumerate(states):
            write_ack_atomically(fs_target.ack_dir, f"ack_{state.filename}", ack_body(f"SO-BURST-{n}"))
            await asyncio.sleep(0.7)
        results = [await finish(client, d) for d in drafts]
        final = await listener_state(client, fs_target.connection_id, lambda s: s.handed_over == WAITING)
        history = await client.get_workflow_handle(policies.listener_id_for(fs_target.connection_id)).fetch_history()

    assert final.runs >= 3, final
    assert len(history.events) <= BURST_BOUND + 12  # this run's own history stays near the bound
    assert history.events[0].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    assert [r.erp_order_id for r in results] == [f"SO-BURST-{n}" for n in range(WAITING)]  # type: ignore[attr-defined]
    moved = sorted(p.name for p in (fs_target.ack_dir / "processed").iterdir())
    assert moved == sorted(f"ack_{s.filename}" for s in states)  # each once: no ".1" copies
    assert final.rejected == 0 and ledger.list_ack_rejections(connection_id=fs_target.connection_id) == []
