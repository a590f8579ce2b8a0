"""Ack edge cases: one ledger transition each, nothing lost.

* an ack that arrives before SENT is recorded (an ERP faster than our ledger);
* duplicate acks (the ERP writes its answer again after it was processed);
* the same ack taken by a poll whose result was lost (a retried activity).

* an answer recorded whose file was never moved (the worker died in between)
  and which a sweep finds before the export's own retried poll.

An ack written slowly is covered in tests/test_corpus_acks.py, the kill between
recording an ack and moving its file end to end in tests/test_chaos_kill.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

import pytest
from sqlalchemy import text
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from activities.acks import AckActivities
from dropzone.acks import parse_ack
from starter.api import export_handle, start_export
from tests.chaos.observer import AckResponder
from tests.helpers import ack_body, error_body, eventually_sync, make_draft
from tests.test_corpus_acks import open_export, poll, put_file

pytestmark = pytest.mark.chaos

ACK_SEEN_DEADLINE = 30.0


@pytest.fixture
def acks(adapters) -> AckActivities:  # type: ignore[no-untyped-def]
    return AckActivities(adapters.ledger, adapters.connectors, sleep=lambda _s: None)


@pytest.mark.asyncio(loop_scope="session")
async def test_ack_that_arrives_before_sent_is_recorded_once(
    client: Client, run_worker, adapters, target, ledger, monkeypatch
):
    real_mark_sent = ledger.mark_sent
    held = threading.Event()

    def mark_sent_after_the_erp_answered(export_id, **kwargs):  # type: ignore[no-untyped-def]
        # The file is published; hold SENT back until the ERP's ack is already there.
        record = ledger.get_export(export_id)
        ack = target.ack_dir / f"ack_{record.filename}"
        eventually_sync(ack.exists, timeout=ACK_SEEN_DEADLINE, every=0.01, what=f"the ERP answering {record.filename}")
        held.set()
        return real_mark_sent(export_id, **kwargs)

    monkeypatch.setattr(adapters.ledger, "mark_sent", mark_sent_after_the_erp_answered)
    draft = make_draft(org_id=target.org_id)
    with AckResponder([(target.export_dir, target.ack_dir)], every_seconds=0.005):
        async with run_worker(client) as queue:
            await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
            result = await asyncio.wait_for(export_handle(client, draft["draft_order_id"]).result(), 60)

    assert held.is_set()
    assert result.status == "ACKED" and result.erp_order_id
    rows = ledger.list_exports(draft_order_id=uuid.UUID(draft["draft_order_id"]))
    assert [(r.status, r.erp_order_id) for r in rows] == [("ACKED", result.erp_order_id)]
    assert rows[0].sent_at is not None
    assert sorted(p.name for p in (target.ack_dir / "processed").iterdir()) == [f"ack_{rows[0].filename}"]
    assert ledger.list_ack_rejections(connection_id=target.connection_id) == []
    # One delivery, one successful poll: the early ack changed nothing else.
    history = await export_handle(client, draft["draft_order_id"]).fetch_history()
    completed = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED]
    assert len(completed) == 4  # open_attempt, render_and_store, deliver, ensure_ack_listener


def test_duplicate_ack_changes_nothing_and_is_shown(adapters, acks: AckActivities, ledger, fs_target):
    record = open_export(ledger, fs_target)
    first = json.dumps(ack_body("SO-FIRST")).encode()
    put_file(fs_target.ack_dir, f"ack_{record.filename}", first)
    outcome = poll(acks, record)
    assert outcome.status == "ACKED" and outcome.erp_order_id == "SO-FIRST"
    acked = ledger.get_export(record.id)

    # The same poll retried after its result was lost: the ledger remembers, one transition.
    again = poll(acks, record)
    assert again.status == "ACKED" and again.erp_order_id == "SO-FIRST"

    # The ERP answers again, even with another order id: long after, another export's poll sweeps it.
    put_file(fs_target.ack_dir, f"ack_{record.filename}", json.dumps(ack_body("SO-SECOND")).encode())
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE erp_export SET updated_at = now() - interval '1 day' WHERE id = :id"), {"id": record.id})
    waiting = open_export(ledger, fs_target)
    # Another worker (the sweep runs at most once per poll interval per worker).
    other_worker = AckActivities(adapters.ledger, adapters.connectors, sleep=lambda _s: None)
    assert poll(other_worker, waiting) == "ACK_PENDING"

    after = ledger.get_export(record.id)
    assert (after.status, after.erp_order_id, after.acked_at) == ("ACKED", "SO-FIRST", acked.acked_at)
    assert sorted(p.name for p in (fs_target.ack_dir / "processed").iterdir()) == [f"ack_{record.filename}"]
    assert (fs_target.ack_dir / "processed" / f"ack_{record.filename}").read_bytes() == first
    assert sorted(p.name for p in (fs_target.ack_dir / "error").iterdir()) == [f"ack_{record.filename}"]
    [rejection] = ledger.list_ack_rejections(connection_id=fs_target.connection_id)
    assert rejection.export_id == record.id and "already ACKED" in rejection.reason


@pytest.mark.parametrize("kind", ["ack", "error"])
def test_answer_recorded_but_never_moved_is_finished_by_the_sweep_not_rejected(adapters, ledger, fs_target, kind):
    # A worker died between recording the answer and moving its file, and the
    # export's own retried poll came after the sweep's grace: another export's
    # poll finds the file. It is this export's recorded answer, not a duplicate.
    record = open_export(ledger, fs_target)
    body = ack_body("SO-RECORDED") if kind == "ack" else error_body()
    parsed = parse_ack(json.dumps(body).encode(), kind=kind, name=f"{kind}_{record.filename}")
    if kind == "ack":
        ledger.mark_acked(record.id, erp_order_id="SO-RECORDED", acked_at=parsed.processed_at)
    else:
        ledger.mark_failed(record.id, error_json=parsed.to_error_json())
    put_file(fs_target.ack_dir, f"{kind}_{record.filename}", json.dumps(body).encode())
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE erp_export SET updated_at = now() - interval '1 day' WHERE id = :id"), {"id": record.id})
    before = ledger.get_export(record.id)

    waiting = open_export(ledger, fs_target)
    other_worker = AckActivities(adapters.ledger, adapters.connectors, sleep=lambda _s: None)
    assert poll(other_worker, waiting) == "ACK_PENDING"

    assert sorted(p.name for p in (fs_target.ack_dir / "processed").iterdir()) == [f"{kind}_{record.filename}"]
    assert not (fs_target.ack_dir / "error").exists()
    assert ledger.list_ack_rejections(connection_id=fs_target.connection_id) == []
    after = ledger.get_export(record.id)
    assert (after.status, after.erp_order_id, after.error_json) == (before.status, before.erp_order_id, before.error_json)
