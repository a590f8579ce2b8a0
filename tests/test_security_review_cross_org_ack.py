"""Security review, item 1: one organisation's ERP can never answer another organisation's export.

Org B's ERP (by mistake or on purpose) writes ``ack_``/``error_`` files named
after org A's exports into B's own ``ack_path``. The sweep that runs inside
B's ack poll must treat them as what they are for B — files for exports this
connection never wrote: moved to B's ``error/`` and recorded for B's connection
only, naming no export of A. A's rows stay exactly as they were (no ACKED with
B's order id, no late error), and A's own ERP still answers A's export.

Real PostgreSQL ledger and real dropzones: B's on each kind (a directory,
OpenSSH, asyncssh), A's a directory; the per-export poll runs in Temporal's
ActivityEnvironment, as in tests/test_corpus_acks.py, and B's connection's ack
listener (workflows/ack_listener.py) runs on a real worker on the dev server.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from activities.acks import AckActivities
from dropzone.errors import ACK_TIMEOUT
from dropzone.ledger import ExportRecord, Ledger
from starter.api import cancel_export, export_status, start_export
from tests.conftest import Target, make_target
from tests.helpers import ack_body, error_body, make_draft
from tests.test_ack_listener import listener_state
from tests.test_corpus_acks import open_export, poll, put_file
from workflows import policies


def _acks(adapters) -> AckActivities:  # type: ignore[no-untyped-def]
    # A fresh instance per poll: the sweep runs at most once per poll interval per instance.
    return AckActivities(adapters.ledger, adapters.connectors, sleep=lambda _s: None)


def _timed_out(ledger: Ledger, target: Target) -> ExportRecord:
    """SENT, then FAILED ACK_TIMEOUT: the export waits for a late answer from its own ERP."""
    record = open_export(ledger, target)
    failed = ledger.mark_failed(
        record.id, error_json={"code": ACK_TIMEOUT, "message": "no ack or error file arrived within the ack timeout"}
    )
    assert failed.awaits_late_ack
    return failed


def _acked_long_ago(ledger: Ledger, target: Target) -> ExportRecord:
    record = open_export(ledger, target)
    ledger.mark_acked(record.id, erp_order_id="SO-A-1", acked_at=datetime(2025, 12, 27, 10, 10, tzinfo=UTC))
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE erp_export SET updated_at = now() - interval '1 day' WHERE id = :id"), {"id": record.id})
    return ledger.get_export(record.id)


def test_an_erp_cannot_answer_another_organisations_exports(request, adapters, ledger, tmp_path, target):
    org_a = make_target("filesystem", request, ledger, tmp_path)
    org_b = target
    assert org_a.org_id != org_b.org_id
    a_timed_out = _timed_out(ledger, org_a)
    a_waiting = open_export(ledger, org_a)
    a_acked = _acked_long_ago(ledger, org_a)
    a_rows = [ledger.get_export(r.id) for r in (a_timed_out, a_waiting, a_acked)]
    b_waiting = open_export(ledger, org_b)

    # B's ERP answers A's file names, in B's ack_path; written long ago, so the sweep takes them.
    planted = {
        f"ack_{a_timed_out.filename}": json.dumps(ack_body("SO-FROM-B")).encode(),
        f"error_{a_waiting.filename}": json.dumps(error_body("FROM_B")).encode(),
        f"ack_{a_acked.filename}": json.dumps(ack_body("SO-FROM-B-2")).encode(),
    }
    for name, body in planted.items():
        put_file(org_b.ack_dir, name, body)

    assert poll(_acks(adapters), b_waiting) == "ACK_PENDING"  # B's own export: still no answer

    # A: untouched, every column.
    assert [ledger.get_export(r.id) for r in a_rows] == a_rows
    assert ledger.get_export(a_timed_out.id).erp_order_id is None
    assert ledger.list_ack_rejections(connection_id=org_a.connection_id) == []
    assert ledger.list_ack_rejections(org_id=org_a.org_id) == []
    assert not (org_a.ack_dir / "error").exists() and not (org_a.ack_dir / "processed").exists()

    # B: every planted file moved to B's error/ and recorded for B's connection,
    # as files no export of B wrote; nothing tells B's operators about A's exports.
    error_dir = org_b.ack_dir / "error"
    assert sorted(p.name for p in error_dir.iterdir()) == sorted(planted)
    for name, body in planted.items():
        assert (error_dir / name).read_bytes() == body
    assert not (org_b.ack_dir / "processed").exists()
    rejections = ledger.list_ack_rejections(connection_id=org_b.connection_id)
    assert sorted(r.ack_file for r in rejections) == sorted(planted)
    for rejection in rejections:
        assert (rejection.org_id, rejection.erp_connection_id, rejection.export_id) == (
            org_b.org_id, org_b.connection_id, None
        )
        assert "which no export in the ledger wrote for this connection" in rejection.reason
        assert not any(str(r.id) in rejection.reason for r in a_rows)
    assert ledger.get_export(b_waiting.id).status == "SENT"


def test_the_owners_erp_still_answers_its_export_after_a_foreign_ack(request, adapters, ledger, tmp_path):
    org_a = make_target("filesystem", request, ledger, tmp_path)
    org_b = make_target("filesystem", request, ledger, tmp_path)
    a_timed_out = _timed_out(ledger, org_a)
    b_waiting = open_export(ledger, org_b)
    put_file(org_b.ack_dir, f"ack_{a_timed_out.filename}", json.dumps(ack_body("SO-FROM-B")).encode())
    assert poll(_acks(adapters), b_waiting) == "ACK_PENDING"
    assert ledger.get_export(a_timed_out.id) == a_timed_out

    # A's own ERP answers late, in A's ack_path: A's poll records it as its late ack.
    put_file(org_a.ack_dir, f"ack_{a_timed_out.filename}", json.dumps(ack_body("SO-A-LATE")).encode())
    outcome = poll(_acks(adapters), a_timed_out)
    assert (outcome.status, outcome.erp_order_id, outcome.late) == ("ACKED", "SO-A-LATE", True)
    row = ledger.get_export(a_timed_out.id)
    assert (row.status, row.erp_order_id) == ("ACKED", "SO-A-LATE")
    assert [p.name for p in (org_a.ack_dir / "processed").iterdir()] == [f"ack_{a_timed_out.filename}"]


@pytest.mark.asyncio(loop_scope="session")
async def test_the_ack_listener_of_one_organisation_never_answers_another(
    request, client, run_worker, ledger, tmp_path
):
    """The same, end to end: B's connection's ack listener (a real worker) does the looking."""
    org_a = make_target("filesystem", request, ledger, tmp_path)
    org_b = make_target("filesystem", request, ledger, tmp_path)
    a_timed_out = _timed_out(ledger, org_a)
    a_waiting = open_export(ledger, org_a)
    a_rows = [ledger.get_export(r.id) for r in (a_timed_out, a_waiting)]
    planted = {f"ack_{a_timed_out.filename}": ack_body("SO-FROM-B"), f"error_{a_waiting.filename}": error_body("FROM_B")}
    for name, body in planted.items():
        put_file(org_b.ack_dir, name, json.dumps(body).encode())
    draft = make_draft(org_id=org_b.org_id)
    listener = client.get_workflow_handle(policies.listener_id_for(org_b.connection_id))
    try:
        async with run_worker(client) as queue:
            # B's own export makes B's listener run; it finds the planted files at its first look.
            await start_export(client, erp_connection_id=org_b.connection_id, draft=draft, task_queue=queue)
            state = await listener_state(client, org_b.connection_id, lambda s: s.rejected >= len(planted), timeout=90)
            assert (await export_status(client, draft["draft_order_id"])).waiting_for == "ack"
            await cancel_export(client, draft["draft_order_id"], reason="test done")
    finally:
        with contextlib.suppress(Exception):  # the listener outlives exports; not this test
            await listener.terminate(reason="test done")

    assert state.rejected == len(planted) and state.handed_over == 0 and state.recorded_without_run == 0
    assert [ledger.get_export(r.id) for r in a_rows] == a_rows
    assert ledger.list_ack_rejections(org_id=org_a.org_id) == []
    assert sorted(p.name for p in (org_b.ack_dir / "error").iterdir()) == sorted(planted)
    rejections = ledger.list_ack_rejections(connection_id=org_b.connection_id)
    assert sorted(r.ack_file for r in rejections) == sorted(planted)
    assert all(r.export_id is None and r.org_id == org_b.org_id for r in rejections)
