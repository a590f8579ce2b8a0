"""Issue 11 item 1: one organisation's ERP can never answer another organisation's export.

Org B's ERP (by mistake or on purpose) writes ``ack_``/``error_`` files named
after org A's exports into B's own ``ack_path``. The sweep that runs inside
B's ack poll must treat them as what they are for B — files for exports this
connection never wrote: moved to B's ``error/`` and recorded for B's connection
only, naming no export of A. A's rows stay exactly as they were (no ACKED with
B's order id, no late error), and A's own ERP still answers A's export.

Real PostgreSQL ledger and real dropzones: B's on each kind (a directory,
OpenSSH, asyncssh), A's a directory; the poll runs in Temporal's
ActivityEnvironment, as in tests/test_corpus_acks.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from activities.acks import AckActivities
from dropzone.errors import ACK_TIMEOUT
from dropzone.ledger import ExportRecord, Ledger
from tests.conftest import Target, make_target
from tests.helpers import ack_body, error_body
from tests.test_corpus_acks import open_export, poll, put_file


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
