"""The ledger's read queries that the CLI and the HTTP API use, against the real PostgreSQL.

Each is one statement however many drafts it covers: the statements are
counted with SQLAlchemy's ``before_cursor_execute`` event on the ledger's engine.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, update
from typer.testing import CliRunner

from dropzone.errors import LedgerUnavailableError
from dropzone.ledger import ErpAckRejection, ErpExport, ExportRecord, ExportStatus, Ledger
from starter.cli import app
from tests.dropzone.test_ledger import CONFIG, open_attempt
from tests.fixtures.postgres import free_port
from tests.test_corpus_acks import cli_env  # noqa: F401 (fixture)

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@contextmanager
def statements(ledger: Ledger) -> Iterator[list[str]]:
    """Every SQL statement the ledger's engine sends while the block runs."""
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ARG001
        sent.append(statement)

    event.listen(ledger.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(ledger.engine, "before_cursor_execute", record)


def attempts(ledger: Ledger, connection, outcomes: list[str], *, created: list[datetime] | None = None) -> uuid.UUID:
    """One draft with one attempt per outcome (FAILED, ACKED, SENT or PENDING), in that order."""
    draft = uuid.uuid4()
    for n, outcome in enumerate(outcomes, start=1):
        record = open_attempt(ledger, connection, draft, run_id=f"run-{draft}", seq=n)
        if outcome == "FAILED":
            ledger.mark_failed(record.id, error_json={"code": "DROPZONE_UNAVAILABLE", "message": "down"})
        elif outcome in ("SENT", "ACKED"):
            ledger.mark_sent(record.id, dropzone_path=f"/exports/{record.filename}")
            if outcome == "ACKED":
                ledger.mark_acked(record.id, erp_order_id=f"SO-{n}", acked_at=datetime.now(UTC))
        if created is not None:  # the test says when each attempt was made
            with ledger.engine.begin() as conn:
                conn.execute(update(ErpExport).where(ErpExport.id == record.id).values(created_at=created[n - 1]))
    return draft


@pytest.fixture
def connection(ledger: Ledger):
    return ledger.add_connection(uuid.uuid4(), "DROPZONE_JSON_V1", CONFIG)


def test_failed_drafts_are_those_whose_latest_attempt_failed_newest_failure_first(ledger: Ledger, connection) -> None:
    # Its FAILED first attempt is the newest failure in the table, but the retry was ACKED.
    retried_ok = attempts(ledger, connection, ["FAILED", "ACKED"], created=[T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)])
    retry_running = attempts(ledger, connection, ["FAILED", "PENDING"])
    retry_waiting = attempts(ledger, connection, ["FAILED", "SENT"])
    acked = attempts(ledger, connection, ["ACKED"])
    # Three failures, the last one an hour older than `newer`'s: time orders them, not attempt numbers.
    older = attempts(ledger, connection, ["FAILED"] * 3, created=[T0 - timedelta(hours=h) for h in (3, 2, 1)])
    newer = attempts(ledger, connection, ["ACKED", "FAILED"], created=[T0 - timedelta(hours=4), T0])
    other_org = ledger.add_connection(uuid.uuid4(), "DROPZONE_JSON_V1", CONFIG)
    foreign = attempts(ledger, other_org, ["FAILED"], created=[T0 + timedelta(hours=1)])

    with statements(ledger) as sent:
        failed = ledger.failed_draft_ids(connection.org_id)

    assert failed == [newer, older]
    assert not {retried_ok, retry_running, retry_waiting, acked, foreign} & set(failed)
    assert ledger.failed_draft_ids(other_org.org_id) == [foreign]
    assert ledger.failed_draft_ids(uuid.uuid4()) == []
    assert len(sent) == 1, sent
    assert "OVER (PARTITION BY" in sent[0]


def test_failed_drafts_take_one_statement_however_many_drafts(ledger: Ledger, connection) -> None:
    failed = [attempts(ledger, connection, ["FAILED"], created=[T0 - timedelta(minutes=n)]) for n in range(30)]
    for _ in range(30):
        attempts(ledger, connection, ["FAILED", "ACKED"])

    with statements(ledger) as sent:
        found = ledger.failed_draft_ids(connection.org_id)

    assert found == failed  # created one minute apart, newest first
    assert len(sent) == 1, sent


def test_drafts_without_attempt_keep_the_order_given_in_one_statement(ledger: Ledger, connection) -> None:
    known = attempts(ledger, connection, ["FAILED"])
    unknown_a, unknown_b = uuid.uuid4(), uuid.uuid4()

    with statements(ledger) as sent:
        missing = ledger.drafts_without_attempt([unknown_b, known, unknown_a, unknown_b])
    assert missing == [unknown_b, unknown_a]
    assert len(sent) == 1, sent

    with statements(ledger) as sent:
        assert ledger.drafts_without_attempt([]) == []
    assert sent == []


def test_draft_attempts_first_first_and_only_the_callers_org(ledger: Ledger, connection) -> None:
    # Created newest-first on purpose: the order is the attempt number's, not the clock's.
    draft = attempts(ledger, connection, ["FAILED", "FAILED", "ACKED"], created=[T0, T0 - timedelta(hours=1), T0 - timedelta(hours=2)])
    attempts(ledger, connection, ["FAILED"])  # another draft

    with statements(ledger) as sent:
        rows = ledger.draft_attempts(draft)
    assert [(r.attempt, r.status) for r in rows] == [
        (1, ExportStatus.FAILED), (2, ExportStatus.FAILED), (3, ExportStatus.ACKED),
    ]
    assert all(isinstance(r, ExportRecord) and r.draft_order_id == draft for r in rows)
    assert len(sent) == 1, sent
    assert ledger.draft_attempts(draft, org_id=connection.org_id) == rows
    assert ledger.draft_attempts(draft, org_id=uuid.uuid4()) == []
    assert ledger.draft_attempts(uuid.uuid4()) == []


def test_ping_is_one_select_and_names_only_host_port_and_database_when_down(ledger: Ledger, config_cipher) -> None:
    with statements(ledger) as sent:
        ledger.ping()
    assert sent == ["SELECT 1"]

    port = free_port()
    down = Ledger.connect(f"postgresql://orderflow:pw-not-for-messages@127.0.0.1:{port}/ledger", config_cipher)
    try:
        with pytest.raises(LedgerUnavailableError) as caught:
            down.ping()
    finally:
        down.dispose()
    assert caught.value.message == f"database unavailable: 127.0.0.1:{port}/ledger"
    assert "pw-not-for-messages" not in str(caught.value)


def test_acks_rejected_since_reads_the_option_like_every_other_command(ledger: Ledger, connection, cli_env) -> None:
    def reject(name: str) -> uuid.UUID:
        return ledger.record_ack_rejection(
            org_id=connection.org_id, erp_connection_id=connection.id, ack_file=name,
            reason="malformed", moved_to=f"/acks/error/{name}",
        ).id

    recent, old = reject("ack_recent.json"), reject("ack_old.json")
    with ledger.engine.begin() as conn:
        conn.execute(update(ErpAckRejection).where(ErpAckRejection.id == old).values(created_at=datetime.now(UTC) - timedelta(hours=3)))
    org = str(connection.org_id)

    for since in ("2h", "120 M"):  # the shared parser: spaces and upper case units too
        result = CliRunner().invoke(app, ["acks", "rejected", "--org", org, "--since", since, "--json"], env=cli_env)
        assert result.exit_code == 0, result.stderr
        assert [row["id"] for row in json.loads(result.stdout)] == [str(recent)]
    everything = CliRunner().invoke(app, ["acks", "rejected", "--org", org, "--json"], env=cli_env)
    assert [row["id"] for row in json.loads(everything.stdout)] == [str(recent), str(old)]

    bad = CliRunner().invoke(app, ["acks", "rejected", "--org", org, "--since", "yesterday"], env=cli_env)
    assert bad.exit_code == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "error: --since 'yesterday': expected a duration such as 30m, 2h, 7d or an ISO date/time "
        "such as 2025-12-01 or 2025-12-01T10:00:00Z"
    ]
