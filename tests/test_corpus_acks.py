"""Bad ack files (tests/data/bad_acks/) against the real ack poll.

Every bad file is moved to ``<ack_path>/error/``, recorded in
``erp_ack_rejection``, shown by ``dropzone acks rejected``, and changes no
export. Real ledger (PostgreSQL), real dropzones (a directory; OpenSSH for the
sweep over SFTP); the activity runs in Temporal's ActivityEnvironment.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from typer.testing import CliRunner

import starter.cli  # noqa: F401  (registers the commands)
from activities.acks import AckActivities
from dropzone import naming
from dropzone.acks import MAX_ACK_BYTES
from dropzone.contracts import ExportRef
from dropzone.ledger import ExportRecord, Ledger
from starter.api import start_export
from starter.cli.common import app
from tests.conftest import Target, add_connection
from tests.helpers import ack_body, error_body, eventually, make_draft, wait_for_state

DATA = Path(__file__).parent / "data" / "bad_acks"
INDEX: dict[str, dict[str, str]] = json.loads((DATA / "index.json").read_text(encoding="utf-8"))
LONG_AGO = 3600.0  # seconds: settled, and past any sweep grace in these tests


def open_export(ledger: Ledger, target: Target, *, sent: bool = True) -> ExportRecord:
    draft_order_id = uuid.uuid4()
    record = ledger.open_attempt(
        org_id=target.org_id,
        erp_connection_id=target.connection_id,
        draft_order_id=draft_order_id,
        workflow_id=f"erp-export-{draft_order_id}",
        workflow_run_id=str(uuid.uuid4()),
        run_seq=1,
        filename_for=lambda export_id, created_at: naming.export_filename(draft_order_id, created_at, export_id),
        storage_key_for=lambda filename: naming.storage_key(target.org_id, filename),
    )
    if sent:
        ledger.record_stored(record.id, sha256="0" * 64, size_bytes=1)
        record = ledger.mark_sent(record.id, dropzone_path=str(target.export_dir / record.filename))
    return record


def put_file(directory: Path, name: str, body: bytes, *, age: float = LONG_AGO) -> Path:
    path = directory / name
    path.write_bytes(body)
    if age:
        past = time.time() - age
        os.utime(path, (past, past))
    return path


def poll(activities: AckActivities, record: ExportRecord):  # type: ignore[no-untyped-def]
    """The outcome, or the ApplicationError's type (``ACK_PENDING`` while nothing was taken)."""
    try:
        return ActivityEnvironment().run(activities.poll_ack, ExportRef(export_id=record.id))
    except ApplicationError as exc:
        return exc.type


@pytest.fixture
def acks(adapters) -> AckActivities:  # type: ignore[no-untyped-def]
    return AckActivities(adapters.ledger, adapters.connectors)


@pytest.fixture
def cli_env(migrated_db_url, config_key, tmp_path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "DROPZONE_ENV_FILE": str(tmp_path / "absent.env"),
        "DROPZONE_DATABASE_URL": str(migrated_db_url),
        "DROPZONE_CONFIG_KEYS": config_key,
    }


def rejected_via_cli(cli_env: dict[str, str], connection_id: uuid.UUID) -> list[dict]:
    result = CliRunner().invoke(app, ["acks", "rejected", "--connection", str(connection_id), "--json"], env=cli_env)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_the_corpus_is_big_enough():
    assert len(INDEX) >= 20
    assert {p.name for p in DATA.glob("*.body")} == set(INDEX)


@pytest.mark.parametrize("body_file", sorted(INDEX))
def test_bad_ack_is_moved_recorded_and_changes_nothing(body_file, acks, ledger, fs_target):
    expected = INDEX[body_file]
    record = open_export(ledger, fs_target)
    name = f"{expected['kind']}_{record.filename}"
    body = (DATA / body_file).read_bytes()
    put_file(fs_target.ack_dir, name, body)

    assert poll(acks, record) == "ACK_PENDING"

    assert not (fs_target.ack_dir / name).exists()
    assert (fs_target.ack_dir / "error" / name).read_bytes() == body
    (rejection,) = ledger.list_ack_rejections(connection_id=fs_target.connection_id)
    assert rejection.ack_file == name and rejection.export_id == record.id
    assert rejection.org_id == fs_target.org_id
    assert rejection.moved_to == str(fs_target.ack_dir / "error" / name)
    assert expected["reason"] in rejection.reason and name in rejection.reason
    assert ledger.get_export(record.id) == record  # not a byte of the export changed


def test_valid_exports_survive_a_directory_full_of_bad_acks(acks, ledger, fs_target, cli_env):
    good = open_export(ledger, fs_target)
    early = open_export(ledger, fs_target, sent=False)  # its ack beats the SENT record
    put_file(fs_target.ack_dir, f"ack_{good.filename}", json.dumps(ack_body("SO-GOOD")).encode())
    put_file(fs_target.ack_dir, f"error_{early.filename}", json.dumps(error_body("NO_STOCK")).encode())
    bad_names = []
    for body_file, expected in sorted(INDEX.items()):
        record = open_export(ledger, fs_target)
        name = f"{expected['kind']}_{record.filename}"
        put_file(fs_target.ack_dir, name, (DATA / body_file).read_bytes())
        assert poll(acks, record) == "ACK_PENDING", body_file
        bad_names.append(name)

    outcome = poll(acks, good)
    assert outcome.status == "ACKED" and outcome.erp_order_id == "SO-GOOD"
    outcome = poll(acks, early)
    assert outcome.status == "FAILED" and outcome.error.code == "NO_STOCK"
    assert ledger.get_export(early.id).status == "FAILED"

    processed = sorted(p.name for p in (fs_target.ack_dir / "processed").iterdir())
    assert processed == sorted([f"ack_{good.filename}", f"error_{early.filename}"])
    assert sorted(p.name for p in (fs_target.ack_dir / "error").iterdir()) == sorted(bad_names)
    assert [p.name for p in fs_target.ack_dir.iterdir() if p.is_file()] == []

    shown = rejected_via_cli(cli_env, fs_target.connection_id)
    assert sorted(row["ack_file"] for row in shown) == sorted(bad_names)
    plain = CliRunner().invoke(app, ["acks", "rejected", "--connection", str(fs_target.connection_id)], env=cli_env)
    assert plain.exit_code == 0 and all(name in plain.stdout for name in bad_names)


def test_both_ack_and_error_for_one_export_are_both_rejected(acks, ledger, fs_target):
    record = open_export(ledger, fs_target)
    put_file(fs_target.ack_dir, f"ack_{record.filename}", json.dumps(ack_body()).encode())
    put_file(fs_target.ack_dir, f"error_{record.filename}", json.dumps(error_body()).encode())

    assert poll(acks, record) == "ACK_PENDING"

    assert sorted(p.name for p in (fs_target.ack_dir / "error").iterdir()) == [
        f"ack_{record.filename}",
        f"error_{record.filename}",
    ]
    rejections = ledger.list_ack_rejections(connection_id=fs_target.connection_id)
    assert len(rejections) == 2 and all("both ack_ and error_" in r.reason for r in rejections)
    assert ledger.get_export(record.id).status == "SENT"


def test_a_50_mb_ack_is_rejected_by_its_size(acks, ledger, fs_target):
    record = open_export(ledger, fs_target)
    name = f"ack_{record.filename}"
    path = fs_target.ack_dir / name
    with path.open("wb") as f:
        f.write(b'{"status": "ACKED", "erp_order_id": "SO-1", "processed_at": "2025-12-27T10:10:00Z", "pad": "')
        f.write(b"x" * (50 * 1024 * 1024))
        f.write(b'"}')
    past = time.time() - LONG_AGO
    os.utime(path, (past, past))

    assert poll(acks, record) == "ACK_PENDING"

    assert (fs_target.ack_dir / "error" / name).stat().st_size > 50 * 1024 * 1024
    (rejection,) = ledger.list_ack_rejections(connection_id=fs_target.connection_id)
    assert f"larger than {MAX_ACK_BYTES} bytes" in rejection.reason
    assert ledger.get_export(record.id).status == "SENT"


def test_an_ack_still_being_written_is_left_for_the_next_poll(adapters, ledger, fs_target):
    record = open_export(ledger, fs_target)
    path = fs_target.ack_dir / f"ack_{record.filename}"
    whole = json.dumps(ack_body("SO-SLOW")).encode()
    path.write_bytes(whole[:10])  # fresh mtime: the ERP has just started writing

    def erp_keeps_writing(_seconds: float) -> None:
        # Between the poll's two looks the writer appends more: the size moves.
        with path.open("ab") as f:
            f.write(whole[10:20])

    writing = AckActivities(adapters.ledger, adapters.connectors, sleep=erp_keeps_writing)
    assert poll(writing, record) == "ACK_PENDING"
    assert path.exists() and not (fs_target.ack_dir / "error").exists()
    assert ledger.list_ack_rejections(connection_id=fs_target.connection_id) == []

    path.write_bytes(whole)  # finished; still fresh, but two looks now agree
    quiet = AckActivities(adapters.ledger, adapters.connectors, sleep=lambda _s: None)
    outcome = poll(quiet, record)
    assert outcome.status == "ACKED" and outcome.erp_order_id == "SO-SLOW"
    assert (fs_target.ack_dir / "processed" / path.name).exists()


def test_an_empty_file_just_created_is_not_judged_yet(adapters, ledger, fs_target):
    record = open_export(ledger, fs_target)
    path = put_file(fs_target.ack_dir, f"ack_{record.filename}", b"", age=0)
    quiet = AckActivities(adapters.ledger, adapters.connectors, sleep=lambda _s: None)
    assert poll(quiet, record) == "ACK_PENDING"
    assert path.exists()
    assert ledger.list_ack_rejections(connection_id=fs_target.connection_id) == []


def test_sweep_moves_acks_for_unknown_and_long_finished_exports_only(acks, ledger, fs_target, cli_env):
    waiting = open_export(ledger, fs_target)
    unknown = "ack_sales_order_deadbeef_20250101_000000_cafebabe.json"
    put_file(fs_target.ack_dir, unknown, json.dumps(ack_body()).encode())
    # Young: may belong to an export being opened right now somewhere else.
    just_now = "error_sales_order_0badf00d_20250101_000000_cafebabe.json"
    put_file(fs_target.ack_dir, just_now, json.dumps(error_body()).encode(), age=1)
    # Known and still waiting: its own poll will take it.
    other = open_export(ledger, fs_target)
    put_file(fs_target.ack_dir, f"ack_{other.filename}", json.dumps(ack_body("SO-OTHER")).encode())
    # Known, rejected by the ERP long ago, answered again: nobody would ever look at it.
    # (A late ack after ACK_TIMEOUT is recorded instead: tests/test_long_wait.py.)
    finished = open_export(ledger, fs_target)
    ledger.mark_failed(finished.id, error_json={"code": "INVALID_CUSTOMER", "message": "no 4711"})
    with ledger.engine.begin() as conn:
        conn.execute(
            text("UPDATE erp_export SET updated_at = now() - interval '1 day' WHERE id = :id"), {"id": finished.id}
        )
    put_file(fs_target.ack_dir, f"ack_{finished.filename}", json.dumps(ack_body("SO-LATE")).encode())
    # Not ours at all: never touched.
    for stranger in ("readme.txt", "ack_.json", ".ack_hidden.json", "ack_x.json.tmp"):
        put_file(fs_target.ack_dir, stranger, b"{}")

    assert poll(acks, waiting) == "ACK_PENDING"

    moved = sorted(p.name for p in (fs_target.ack_dir / "error").iterdir())
    assert moved == sorted([unknown, f"ack_{finished.filename}"])
    left = sorted(p.name for p in fs_target.ack_dir.iterdir() if p.is_file())
    assert left == sorted([just_now, f"ack_{other.filename}", "readme.txt", "ack_.json", ".ack_hidden.json",
                           "ack_x.json.tmp"])
    by_file = {r.ack_file: r for r in ledger.list_ack_rejections(connection_id=fs_target.connection_id)}
    assert set(by_file) == {unknown, f"ack_{finished.filename}"}
    assert by_file[unknown].export_id is None and "no export in the ledger" in by_file[unknown].reason
    assert by_file[f"ack_{finished.filename}"].export_id == finished.id
    assert "already FAILED (INVALID_CUSTOMER)" in by_file[f"ack_{finished.filename}"].reason
    assert ledger.get_export(finished.id).status == "FAILED"  # the contradicting ack is shown, not applied
    assert {row["ack_file"] for row in rejected_via_cli(cli_env, fs_target.connection_id)} == set(by_file)

    outcome = poll(acks, other)
    assert outcome.status == "ACKED" and outcome.erp_order_id == "SO-OTHER"


def test_sweep_over_sftp(acks, ledger, openssh_server):
    org_id = uuid.uuid4()
    config = openssh_server.config(poll_interval_seconds=1)
    target = Target(
        "openssh", org_id, add_connection(ledger, org_id, config),
        openssh_server.local_path(config["export_path"]), openssh_server.local_path(config["ack_path"]), config,
    )
    waiting = open_export(ledger, target)
    unknown = "error_sales_order_deadbeef_20250101_000000_cafebabe.json"
    put_file(target.ack_dir, unknown, json.dumps(error_body()).encode())
    malformed = f"ack_{waiting.filename}"
    put_file(target.ack_dir, malformed, b'{"status": "ACKED"')

    assert poll(acks, waiting) == "ACK_PENDING"

    assert sorted(p.name for p in (target.ack_dir / "error").iterdir()) == sorted([unknown, malformed])
    rejections = {r.ack_file: r for r in ledger.list_ack_rejections(connection_id=target.connection_id)}
    assert set(rejections) == {unknown, malformed}
    assert rejections[malformed].moved_to == f"{config['ack_path']}/error/{malformed}"


@pytest.mark.asyncio(loop_scope="session")
async def test_workflow_waiting_for_its_ack_sweeps_an_unknown_one(client: Client, run_worker, fs_target, ledger):
    draft = make_draft(org_id=fs_target.org_id)
    unknown = "ack_sales_order_deadbeef_20250101_000000_cafebabe.json"
    put_file(fs_target.ack_dir, unknown, json.dumps(ack_body()).encode())
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=fs_target.connection_id, draft=draft, task_queue=queue)
        state = await wait_for_state(client, draft["draft_order_id"], lambda s: s.waiting_for == "ack")
        await wait_for_rejection(ledger, fs_target.connection_id)
        put_file(fs_target.ack_dir, f"ack_{state.filename}", json.dumps(ack_body("SO-9")).encode(), age=0)
        await wait_for_state(client, draft["draft_order_id"], lambda s: s.status == "ACKED")
    (rejection,) = ledger.list_ack_rejections(connection_id=fs_target.connection_id)
    assert rejection.ack_file == unknown and (fs_target.ack_dir / "error" / unknown).is_file()


async def wait_for_rejection(ledger: Ledger, connection_id: uuid.UUID, timeout: float = 30) -> None:
    await eventually(
        lambda: ledger.list_ack_rejections(connection_id=connection_id), timeout=timeout, every=0.2,
        what="the unknown ack swept",
    )
