"""The ledger against a real PostgreSQL (tests/fixtures/postgres.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool

from dropzone.crypto import ConfigCipher
from dropzone.errors import (
    ConfigKeyError,
    ConnectionNotFoundError,
    ExportNotFoundError,
    InvalidConfigError,
    LedgerUnavailableError,
)
from dropzone.ledger import (
    VERSION_TABLE,
    Base,
    ConnectionRecord,
    ExportRecord,
    ExportStatus,
    Ledger,
    alembic_config,
    migrate,
)
from tests.helpers import free_port

CONFIG = {
    "mode": "sftp",
    "host": "sftp.example.com",
    "port": 22,
    "username": "orderflow",
    "password": "pa55word-not-for-logs",
    "host_key": "SHA256:abc",
    "export_path": "/dropzone/exports",
    "ack_path": "/dropzone/acks",
    "atomic_write": True,
}


def filename_for(draft_order_id):
    # The naming rules, spelled out here so these tests do not depend on dropzone.naming.
    def build(export_id, created_at):
        return f"sales_order_{draft_order_id.hex[:8]}_{created_at:%Y%m%d_%H%M%S}_{export_id.hex[:8]}.json"

    return build


def open_attempt(ledger, connection, draft_order_id, *, run_id="run-1", seq=1):
    return ledger.open_attempt(
        org_id=connection.org_id,
        erp_connection_id=connection.id,
        draft_order_id=draft_order_id,
        workflow_id=f"erp-export-{draft_order_id}",
        workflow_run_id=run_id,
        run_seq=seq,
        filename_for=filename_for(draft_order_id),
        storage_key_for=lambda filename: f"exports/{connection.org_id}/{filename}",
    )


@pytest.fixture
def connection(ledger):
    return ledger.add_connection(uuid.uuid4(), "DROPZONE_JSON_V1", CONFIG)


# --- migrations -----------------------------------------------------------------


def _inspect(url, fn):
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return fn(inspect(conn), conn)
    finally:
        engine.dispose()


def test_migration_creates_the_schema_of_the_models(fresh_database_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the migrations are found from the package, not the cwd

    migrate(fresh_database_url)

    def check(insp, conn):
        assert {"erp_connection", "erp_export", VERSION_TABLE} <= set(insp.get_table_names())
        export_columns = {c["name"]: c for c in insp.get_columns("erp_export")}
        assert set(export_columns) == {
            "id", "org_id", "erp_connection_id", "draft_order_id", "attempt",
            "export_format_version", "export_storage_key", "filename", "sha256", "size_bytes",
            "dropzone_path", "status", "erp_order_id", "error_json", "workflow_id",
            "workflow_run_id", "run_seq", "sent_at", "acked_at", "created_at", "updated_at",
        }  # fmt: skip
        assert export_columns["workflow_run_id"]["nullable"] and export_columns["run_seq"]["nullable"]
        assert str(export_columns["error_json"]["type"]) == "JSONB"
        assert str(export_columns["status"]["type"]) == "VARCHAR(20)"
        assert str(export_columns["created_at"]["type"]) == "TIMESTAMP"
        assert export_columns["created_at"]["type"].timezone

        uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("erp_export")}
        assert {("draft_order_id", "attempt"), ("workflow_run_id", "run_seq")} <= uniques
        checks = insp.get_check_constraints("erp_export")
        assert any("PENDING" in c["sqltext"] and "FAILED" in c["sqltext"] for c in checks)
        (fk,) = insp.get_foreign_keys("erp_export")
        assert fk["referred_table"] == "erp_connection" and fk["constrained_columns"] == ["erp_connection_id"]

        export_indexes = {i["name"]: i for i in insp.get_indexes("erp_export")}
        assert export_indexes["idx_erp_export_filename"]["unique"]
        draft_index = export_indexes["idx_erp_export_draft"]
        assert draft_index["column_names"] == ["org_id", "draft_order_id", "created_at"]
        assert draft_index["column_sorting"] == {"created_at": ("desc",)}
        connection_indexes = {i["name"]: i for i in insp.get_indexes("erp_connection")}
        assert connection_indexes["idx_erp_connection_org_type"]["unique"]
        assert connection_indexes["idx_erp_connection_org_type"]["column_names"] == [
            "org_id",
            "connector_type",
        ]

        # The models describe exactly what the migration built.
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []

    _inspect(fresh_database_url, check)


def test_status_outside_the_four_values_is_refused_by_the_database(ledger, connection):
    export = open_attempt(ledger, connection, uuid.uuid4())
    with pytest.raises(sa_exc.IntegrityError, match="ck_erp_export_status"), ledger.engine.begin() as conn:
        conn.execute(text("UPDATE erp_export SET status = 'DONE' WHERE id = :id"), {"id": export.id})


def test_downgrade_then_upgrade(fresh_database_url):
    migrate(fresh_database_url)
    migrate(fresh_database_url)  # already at head: nothing to do

    command.downgrade(alembic_config(fresh_database_url), "base")
    tables = _inspect(fresh_database_url, lambda insp, _: set(insp.get_table_names()))
    assert not {"erp_connection", "erp_export"} & tables

    migrate(fresh_database_url)
    tables = _inspect(fresh_database_url, lambda insp, _: set(insp.get_table_names()))
    assert {"erp_connection", "erp_export"} <= tables


def test_concurrent_migrations_do_not_collide(fresh_database_url):
    # Several workers starting at once each call migrate(): separate processes,
    # and threads within one.
    script = (
        "import sys\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from dropzone.ledger import migrate\n"
        "with ThreadPoolExecutor(2) as pool:\n"
        "    list(pool.map(migrate, [sys.argv[1]] * 2))\n"
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, fresh_database_url], stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr
    tables = _inspect(fresh_database_url, lambda insp, _: set(insp.get_table_names()))
    assert {"erp_connection", "erp_export"} <= tables


# --- connections --------------------------------------------------------------------


def test_add_get_and_list_connections(ledger):
    org_a, org_b = uuid.uuid4(), uuid.uuid4()

    added = ledger.add_connection(org_a, "DROPZONE_JSON_V1", CONFIG)
    other = ledger.add_connection(org_b, "DROPZONE_JSON_V1", {"mode": "filesystem", "export_path": "/x"})

    record = ledger.get_connection(added.id)
    assert isinstance(record, ConnectionRecord)
    assert record.config == CONFIG
    assert record.org_id == org_a and record.connector_type == "DROPZONE_JSON_V1"
    assert record.active is True and record.last_test_at is None and record.last_test_success is None
    assert record.created_at.tzinfo == UTC
    assert record.summary() == added
    assert [c.id for c in ledger.list_connections(org_a)] == [added.id]
    assert {c.id for c in ledger.list_connections()} == {added.id, other.id}
    assert not hasattr(added, "config")


def test_connection_repr_hides_the_config(ledger, connection):
    record = ledger.get_connection(connection.id)
    assert CONFIG["password"] not in repr(record)
    assert CONFIG["password"] not in str(record)


def test_duplicate_connection_is_rejected(ledger, connection):
    with pytest.raises(InvalidConfigError) as caught:
        ledger.add_connection(connection.org_id, "DROPZONE_JSON_V1", CONFIG)
    assert str(connection.org_id) in str(caught.value) and "DROPZONE_JSON_V1" in str(caught.value)
    assert len(ledger.list_connections(connection.org_id)) == 1


def test_config_is_stored_encrypted(ledger, connection):
    with ledger.engine.connect() as conn:
        raw = conn.execute(
            text("SELECT config_encrypted FROM erp_connection WHERE id = :id"), {"id": connection.id}
        ).scalar_one()
    assert CONFIG["password"] not in raw
    assert "sftp.example.com" not in raw


def test_missing_connection(ledger):
    missing = uuid.uuid4()
    with pytest.raises(ConnectionNotFoundError, match=f"connection {missing} not found"):
        ledger.get_connection(missing)
    with pytest.raises(ConnectionNotFoundError):
        ledger.get_connection("not-a-uuid")
    with pytest.raises(ConnectionNotFoundError):
        ledger.update_connection_config(missing, CONFIG)


def test_update_config_test_result_and_active_flag(ledger, connection):
    new_config = {**CONFIG, "password": "rotated"}

    updated = ledger.update_connection_config(connection.id, new_config)
    tested = ledger.record_connection_test(connection.id, False)
    inactive = ledger.set_connection_active(connection.id, False)

    assert updated.updated_at > connection.updated_at
    assert tested.last_test_success is False and tested.last_test_at is not None
    assert inactive.active is False
    record = ledger.get_connection(connection.id)  # an inactive connection is still returned
    assert record.active is False
    assert record.config == new_config


def test_a_row_under_a_removed_key_names_the_connection_not_the_key(ledger, connection):
    new_key = ConfigCipher.generate_key()
    without_old_key = Ledger(ledger.engine, ConfigCipher([new_key]))

    with pytest.raises(ConfigKeyError) as caught:
        without_old_key.get_connection(connection.id)

    assert (
        str(caught.value)
        == f"connection {connection.id}: config cannot be decrypted with the configured keys"
    )
    assert new_key not in str(caught.value)


def test_rotate_keys_re_encrypts_every_row(ledger):
    old_key, new_key = ConfigCipher.generate_key(), ConfigCipher.generate_key()
    before = Ledger(ledger.engine, ConfigCipher([old_key]))
    ids = [before.add_connection(uuid.uuid4(), "DROPZONE_JSON_V1", CONFIG).id for _ in range(3)]

    rotating = Ledger(ledger.engine, ConfigCipher([new_key, old_key]))
    assert rotating.rotate_keys() == 3

    after = Ledger(ledger.engine, ConfigCipher([new_key]))
    assert all(after.get_connection(i).config == CONFIG for i in ids)
    with pytest.raises(ConfigKeyError):
        before.get_connection(ids[0])


def test_rotate_keys_changes_nothing_when_one_row_is_unreadable(ledger, connection):
    stranger = Ledger(ledger.engine, ConfigCipher([ConfigCipher.generate_key()]))
    stranger.add_connection(uuid.uuid4(), "DROPZONE_JSON_V1", CONFIG)  # readable by `stranger` only

    with pytest.raises(ConfigKeyError):
        stranger.rotate_keys()

    assert ledger.get_connection(connection.id).config == CONFIG


# --- exports ------------------------------------------------------------------------


def test_open_attempt_creates_a_pending_row(ledger, connection):
    draft = uuid.uuid4()

    export = open_attempt(ledger, connection, draft)

    assert isinstance(export, ExportRecord)
    assert export.status is ExportStatus.PENDING
    assert export.attempt == 1
    assert export.export_format_version == "orderflow_export_json_v1"
    assert export.filename == filename_for(draft)(export.id, export.created_at)
    assert export.export_storage_key == f"exports/{connection.org_id}/{export.filename}"
    assert export.workflow_id == f"erp-export-{draft}"
    assert (export.workflow_run_id, export.run_seq) == ("run-1", 1)
    assert export.created_at.tzinfo == UTC
    assert abs(export.created_at - datetime.now(UTC)) < timedelta(seconds=30)
    assert ledger.get_export(export.id) == export
    assert ledger.get_export_by_filename(export.filename, erp_connection_id=connection.id) == export
    # Scoped to the connection: another connection never finds this export by its name.
    assert ledger.get_export_by_filename(export.filename, erp_connection_id=uuid.uuid4()) is None


def test_open_attempt_twice_in_one_run_returns_the_same_row(ledger, connection):
    draft = uuid.uuid4()

    first = open_attempt(ledger, connection, draft, run_id="run-1", seq=1)
    again = open_attempt(ledger, connection, draft, run_id="run-1", seq=1)

    assert again == first
    assert len(ledger.list_exports(draft_order_id=draft)) == 1


def test_attempts_are_numbered_across_runs(ledger, connection):
    draft = uuid.uuid4()

    attempts = [
        open_attempt(ledger, connection, draft, run_id="run-1", seq=1),
        open_attempt(ledger, connection, draft, run_id="run-1", seq=2),
        open_attempt(ledger, connection, draft, run_id="run-2", seq=1),
    ]

    assert [e.attempt for e in attempts] == [1, 2, 3]
    assert len({e.filename for e in attempts}) == 3
    assert ledger.latest_export(draft) == attempts[-1]
    assert [e.attempt for e in ledger.list_exports(draft_order_id=draft)] == [3, 2, 1]


def test_concurrent_open_attempt_never_duplicates(ledger, connection):
    draft = uuid.uuid4()
    threads = 8
    barrier = threading.Barrier(threads)

    def open_in_run(run_id):
        barrier.wait()
        return open_attempt(ledger, connection, draft, run_id=run_id, seq=1)

    # Four twins of the same activity plus four different runs, all at once.
    runs = ["twin"] * 4 + [f"run-{i}" for i in range(4)]
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(open_in_run, runs))

    assert len({r.id for r in results[:4]}) == 1
    rows = ledger.list_exports(draft_order_id=draft)
    assert len(rows) == 5
    assert sorted(r.attempt for r in rows) == [1, 2, 3, 4, 5]


def test_open_attempt_checks_the_connection(ledger, connection):
    missing = uuid.uuid4()
    with pytest.raises(ConnectionNotFoundError, match=str(missing)):
        ledger.open_attempt(
            org_id=connection.org_id,
            erp_connection_id=missing,
            draft_order_id=uuid.uuid4(),
            workflow_id="wf",
            workflow_run_id="run-x",
            run_seq=1,
            filename_for=lambda i, t: f"{i}.json",
            storage_key_for=lambda f: f,
        )
    with pytest.raises(InvalidConfigError, match="does not belong"):
        ledger.open_attempt(
            org_id=uuid.uuid4(),
            erp_connection_id=connection.id,
            draft_order_id=uuid.uuid4(),
            workflow_id="wf",
            workflow_run_id="run-y",
            run_seq=1,
            filename_for=lambda i, t: f"{i}.json",
            storage_key_for=lambda f: f,
        )


def test_happy_path_pending_sent_acked(ledger, connection):
    export = open_attempt(ledger, connection, uuid.uuid4())
    acked_at = datetime(2025, 12, 27, 10, 10, tzinfo=UTC)

    stored = ledger.record_stored(export.id, sha256="ab" * 32, size_bytes=1234)
    sent = ledger.mark_sent(export.id, dropzone_path=f"/dropzone/exports/{export.filename}")
    acked = ledger.mark_acked(export.id, erp_order_id="SO-2025-000123", acked_at=acked_at)

    assert (stored.sha256, stored.size_bytes) == ("ab" * 32, 1234)
    assert sent.status is ExportStatus.SENT and sent.sent_at is not None
    assert sent.dropzone_path == f"/dropzone/exports/{export.filename}"
    assert acked.status is ExportStatus.ACKED
    assert acked.erp_order_id == "SO-2025-000123" and acked.acked_at == acked_at
    assert acked.sent_at == sent.sent_at and acked.sha256 == "ab" * 32
    assert export.updated_at < sent.updated_at <= acked.updated_at


def test_status_never_goes_backwards(ledger, connection):
    export = open_attempt(ledger, connection, uuid.uuid4())
    acked = ledger.mark_acked(export.id, erp_order_id="SO-1", acked_at=datetime.now(UTC))  # before SENT

    assert acked.status is ExportStatus.ACKED and acked.sent_at is None
    assert ledger.mark_sent(export.id, dropzone_path="/late") == acked
    assert ledger.mark_failed(export.id, error_json={"code": "X", "message": "late"}) == acked
    assert ledger.mark_acked(export.id, erp_order_id="SO-2", acked_at=datetime.now(UTC)) == acked
    assert ledger.record_stored(export.id, sha256="00" * 32, size_bytes=1) == acked


def test_failed_stays_failed_and_sent_is_idempotent(ledger, connection):
    export = open_attempt(ledger, connection, uuid.uuid4())

    sent = ledger.mark_sent(export.id, dropzone_path="/a")
    assert ledger.mark_sent(export.id, dropzone_path="/b") == sent
    failed = ledger.mark_failed(export.id, error_json={"code": "INVALID_CUSTOMER", "message": "no 4711"})
    assert failed.status is ExportStatus.FAILED
    assert failed.error_json == {"code": "INVALID_CUSTOMER", "message": "no 4711"}
    assert ledger.mark_failed(export.id, error_json={"code": "OTHER", "message": "x"}) == failed
    assert ledger.mark_sent(export.id, dropzone_path="/c") == failed


def test_a_retry_adds_a_row_and_leaves_the_old_one_alone(ledger, connection):
    draft = uuid.uuid4()
    first = open_attempt(ledger, connection, draft, run_id="run-1", seq=1)
    failed = ledger.mark_failed(first.id, error_json={"code": "AUTH_FAILED", "message": "denied"})

    retry = open_attempt(ledger, connection, draft, run_id="run-1", seq=2)
    ledger.mark_sent(retry.id, dropzone_path="/x")

    assert retry.id != first.id and retry.filename != first.filename and retry.attempt == 2
    assert ledger.get_export(first.id) == failed


def test_export_lookups(ledger, connection):
    draft = uuid.uuid4()
    one = open_attempt(ledger, connection, draft, seq=1)
    ledger.mark_failed(one.id, error_json={"code": "X", "message": "y"})
    two = open_attempt(ledger, connection, draft, seq=2)
    elsewhere = ledger.add_connection(uuid.uuid4(), "DROPZONE_JSON_V1", CONFIG)
    foreign = open_attempt(ledger, elsewhere, uuid.uuid4(), run_id="run-9")

    assert [e.id for e in ledger.list_exports()] == [foreign.id, two.id, one.id]
    assert [e.id for e in ledger.list_exports(org_id=connection.org_id)] == [two.id, one.id]
    assert [e.id for e in ledger.list_exports(status=ExportStatus.FAILED)] == [one.id]
    assert [e.id for e in ledger.list_exports(status="PENDING", org_id=connection.org_id)] == [two.id]
    assert [e.id for e in ledger.list_exports(limit=1, offset=1)] == [two.id]
    assert ledger.list_exports(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert ledger.latest_export(uuid.uuid4()) is None
    assert ledger.get_export_by_filename("nope.json", erp_connection_id=connection.id) is None
    with pytest.raises(ExportNotFoundError):
        ledger.get_export(uuid.uuid4())
    with pytest.raises(ExportNotFoundError):
        ledger.mark_sent(uuid.uuid4(), dropzone_path="/x")


# --- availability -----------------------------------------------------------------


def test_database_down_is_a_transient_error_without_the_password():
    port = free_port()  # nothing listens there
    url = f"postgresql+psycopg://orderflow:s3cret-pw@127.0.0.1:{port}/ledger"
    ledger = Ledger.connect(url, ConfigCipher([ConfigCipher.generate_key()]))
    try:
        with pytest.raises(LedgerUnavailableError) as caught:
            ledger.list_connections()
    finally:
        ledger.dispose()

    assert str(caught.value) == f"database unavailable: 127.0.0.1:{port}/ledger"
    assert caught.value.retryable and caught.value.code == "DATABASE_UNAVAILABLE"
    assert "s3cret-pw" not in repr(caught.value) and "s3cret-pw" not in repr(ledger)


def test_an_unparsable_url_is_a_config_error():
    with pytest.raises(InvalidConfigError) as caught:
        Ledger.connect("not a url :s3cret-pw", ConfigCipher([ConfigCipher.generate_key()]))
    assert "s3cret-pw" not in str(caught.value) and caught.value.__cause__ is None


def test_migrate_against_a_down_database_is_a_transient_error():
    port = free_port()
    with pytest.raises(LedgerUnavailableError) as caught:
        migrate(f"postgresql://orderflow:s3cret-pw@127.0.0.1:{port}/ledger")
    assert "s3cret-pw" not in str(caught.value)


def test_pool_survives_killed_connections(ledger, connection):
    ledger.list_connections()  # a connection now sits in the pool
    with ledger.engine.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )

    assert [c.id for c in ledger.list_connections()] == [connection.id]
