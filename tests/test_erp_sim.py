"""The ERP simulator against a filesystem dropzone and the OpenSSH fixture, as a library,
as `dropzone erp-sim`, and answering the real pipeline over SFTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dropzone import errors, naming
from dropzone.acks import parse_ack
from dropzone.connection_config import parse_connection_config
from dropzone.export_v1 import render_export, validate_draft
from starter.api import start_export
from starter.erp_sim import (
    ErpRules,
    ErpSimulator,
    FilesystemErpSimulator,
    open_erp_side,
    validate_export,
)
from tests.conftest import add_connection
from tests.helpers import make_draft, wait_for_state

DROPZONE = [sys.executable, "-m", "starter.cli"]
REPO = Path(__file__).resolve().parents[1]


def export_file(directory: Path, *, customer: str = "4711", mutate: Any = None) -> str:
    """A real orderflow_export_json_v1 file, as the pipeline renders it; returns its name."""
    draft = make_draft(org_id=uuid.uuid4())
    draft["customer"]["erp_customer_number"] = customer
    body = render_export(validate_draft(draft))
    if mutate is not None:
        document = json.loads(body)
        mutate(document)
        body = json.dumps(document).encode()
    name = naming.export_filename(draft["draft_order_id"], datetime.now(UTC), uuid.uuid4())
    (directory / name).write_bytes(body)
    return name


def read_answer(ack_dir: Path, name: str) -> Any:
    """The answer file, read with the worker's own parser."""
    parsed = naming.parse_ack_name(name)
    assert parsed is not None
    return parse_ack((ack_dir / name).read_bytes(), kind=parsed[0], name=name)


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    export_dir, ack_dir = tmp_path / "export", tmp_path / "ack"
    export_dir.mkdir()
    ack_dir.mkdir()
    return export_dir, ack_dir


# --- the format check --------------------------------------------------------


def test_validation_names_fields_and_requires_the_v1_key_order() -> None:
    body = render_export(validate_draft(make_draft(org_id=uuid.uuid4())))
    assert validate_export(body)[1] == []
    document = json.loads(body)
    document["header"] = dict(reversed(list(document["header"].items())))
    document["lines"][1]["qty"] = "many"
    document["lines"][0]["colour"] = "red"
    del document["meta"]
    parsed, problems = validate_export(json.dumps(document).encode())
    assert parsed is None
    assert any(p.startswith("header: keys out of order") for p in problems)
    assert "lines[1].qty: must be a number" in problems
    assert any(p.startswith("lines[0]: unexpected key(s) 'colour'") for p in problems)
    assert any(p.startswith("(document): missing key(s) meta") for p in problems)
    assert validate_export(b"\xff\xfe")[1] == ["not UTF-8 JSON"]


# --- filesystem ----------------------------------------------------------------


def test_answers_complete_exports_only_with_atomic_ack_and_error_files(tmp_path: Path) -> None:
    export_dir, ack_dir = dirs(tmp_path)
    good = export_file(export_dir)
    unknown_customer = export_file(export_dir, customer="9999")
    broken = export_file(export_dir, mutate=lambda d: d["customer"].pop("name"))
    # What a careful ERP never touches: a file still being written, and names that are not exports.
    in_flight = export_file(export_dir)
    (export_dir / in_flight).rename(export_dir / f"{in_flight}.abc123.tmp")
    (export_dir / "notes.json").write_text("{}")
    (export_dir / "sales_order_dir.json").mkdir()

    sim = FilesystemErpSimulator(export_dir, ack_dir, ErpRules(reject_customers={"9999"}))
    answers = {a.export_filename: a for a in sim.scan_once()}

    assert set(answers) == {good, unknown_customer, broken}
    ack = read_answer(ack_dir, f"ack_{good}")
    assert ack.status == "ACKED" and ack.erp_order_id == answers[good].erp_order_id == "SO-000001"
    rejected = read_answer(ack_dir, f"error_{unknown_customer}")
    assert rejected.error_code == "INVALID_CUSTOMER" and "9999" in rejected.message
    invalid = read_answer(ack_dir, f"error_{broken}")
    assert invalid.error_code == "INVALID_FORMAT" and "customer: missing key(s) name" in invalid.message
    # Exactly the three answers: no temp file left, nothing for the .tmp or the other names.
    assert sorted(os.listdir(ack_dir)) == sorted([f"ack_{good}", f"error_{unknown_customer}", f"error_{broken}"])
    assert sim.scan_once() == []


def test_never_answers_twice_even_after_a_restart(tmp_path: Path) -> None:
    export_dir, ack_dir = dirs(tmp_path)
    first, second = export_file(export_dir), export_file(export_dir, customer="9999")
    FilesystemErpSimulator(export_dir, ack_dir, ErpRules(reject_customers={"9999"})).scan_once()
    # The worker moves answers it has read; one met a name already taken (numeric suffix).
    (ack_dir / "processed").mkdir()
    (ack_dir / "error").mkdir()
    (ack_dir / f"ack_{first}").rename(ack_dir / "processed" / f"ack_{first}.1")
    (ack_dir / f"error_{second}").rename(ack_dir / "error" / f"error_{second}")

    third = export_file(export_dir)
    restarted = FilesystemErpSimulator(export_dir, ack_dir)
    answers = restarted.scan_once()
    assert [a.export_filename for a in answers] == [third]
    # Order ids continue after the answers already there.
    assert answers[0].erp_order_id != "SO-000001"
    assert sorted(os.listdir(ack_dir)) == sorted(["processed", "error", f"ack_{third}"])


def test_delay_is_counted_from_first_sight(tmp_path: Path) -> None:
    export_dir, ack_dir = dirs(tmp_path)
    now = [100.0]
    sim = FilesystemErpSimulator(export_dir, ack_dir, delay_seconds=30, clock=lambda: now[0])
    name = export_file(export_dir)
    assert sim.scan_once() == [] and sim.pending() == 1
    now[0] = 129.0
    assert sim.scan_once() == [] and not list(ack_dir.iterdir())
    now[0] = 130.0
    assert [a.export_filename for a in sim.scan_once()] == [name]
    assert (ack_dir / f"ack_{name}").is_file()


@pytest.mark.parametrize(("rate", "status"), [(1.0, "FAILED"), (0.0, "ACKED")])
def test_reject_rate(tmp_path: Path, rate: float, status: str) -> None:
    export_dir, ack_dir = dirs(tmp_path)
    names = [export_file(export_dir) for _ in range(3)]
    answers = FilesystemErpSimulator(export_dir, ack_dir, ErpRules(reject_rate=rate, seed=7)).scan_once()
    assert [a.status for a in answers] == [status] * 3 and sorted(a.export_filename for a in answers) == sorted(names)
    if status == "FAILED":
        assert {a.error_code for a in answers} == {"SIMULATED_REJECTION"}


def test_reject_rate_outside_0_to_1_is_refused() -> None:
    with pytest.raises(errors.InvalidConfigError, match="between 0 and 1"):
        ErpRules(reject_rate=1.5)


def test_an_oversized_export_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    export_dir, ack_dir = dirs(tmp_path)
    export_file(export_dir)
    answers = FilesystemErpSimulator(export_dir, ack_dir, max_export_bytes=100).scan_once()
    assert answers[0].error_code == "INVALID_FORMAT" and "larger than 100 bytes" in (answers[0].message or "")


def test_write_ack_never_replaces_an_answer(tmp_path: Path) -> None:
    export_dir, ack_dir = dirs(tmp_path)
    side = open_erp_side(parse_connection_config(
        {"mode": "filesystem", "export_path": str(export_dir), "ack_path": str(ack_dir)}
    ))
    name = f"ack_{export_file(export_dir)}"
    side.write_ack(name, b'{"first": true}')
    with pytest.raises(errors.DeliveryConflictError, match="already exists"):
        side.write_ack(name, b'{"second": true}')
    assert (ack_dir / name).read_bytes() == b'{"first": true}'
    assert os.listdir(ack_dir) == [name]
    with pytest.raises(errors.InvalidConfigError):
        side.write_ack("../escape", b"{}")
    with pytest.raises(errors.InvalidConfigError):
        side.write_ack("ack_x.json.tmp", b"{}")


def test_a_connection_without_ack_path_is_refused(tmp_path: Path) -> None:
    config = parse_connection_config({"mode": "filesystem", "export_path": str(tmp_path)})
    with pytest.raises(errors.InvalidConfigError, match="no ack_path"):
        open_erp_side(config)


# --- SFTP (OpenSSH) ------------------------------------------------------------


def test_answers_over_sftp_through_the_transport_layer(openssh_server) -> None:  # type: ignore[no-untyped-def]
    config = parse_connection_config(openssh_server.config())
    export_dir = openssh_server.local_path(config.export_path)
    ack_dir = openssh_server.local_path(config.ack_path)
    good = export_file(export_dir)
    broken = export_file(export_dir, mutate=lambda d: d.update(export_version="v0"))
    in_flight = export_file(export_dir)
    (export_dir / in_flight).rename(export_dir / f"{in_flight}.tok.tmp")

    sim = ErpSimulator(lambda: open_erp_side(config), ErpRules())
    try:
        answers = {a.export_filename: a for a in sim.scan_once()}
        assert set(answers) == {good, broken}
        assert read_answer(ack_dir, f"ack_{good}").erp_order_id == "SO-000001"
        assert read_answer(ack_dir, f"error_{broken}").error_code == "INVALID_FORMAT"
        assert sorted(os.listdir(ack_dir)) == sorted([f"ack_{good}", f"error_{broken}"])
        assert sim.scan_once() == []
    finally:
        sim.close()

    # The worker's processed/ folder counts as answered, seen over SFTP too.
    processed = ack_dir / "processed"
    processed.mkdir()
    (ack_dir / f"ack_{good}").rename(processed / f"ack_{good}")
    with open_erp_side(config) as side:
        assert side.answered_exports() == {good, broken}
        assert side.list_exports() == sorted([good, broken])
        assert side.read_export(good, max_bytes=10) == (export_dir / good).read_bytes()[:11]
        with pytest.raises(errors.DeliveryConflictError):
            side.write_ack(f"error_{broken}", b"{}")


def test_listing_a_missing_directory_over_sftp_names_it(openssh_server) -> None:  # type: ignore[no-untyped-def]
    raw = openssh_server.config()
    raw["export_path"] = raw["export_path"] + "-missing"
    with open_erp_side(parse_connection_config(raw)) as side, \
            pytest.raises(errors.MissingDirectoryError, match="-missing"):
        side.list_exports()


# --- the command -----------------------------------------------------------------


@pytest.fixture
def sim_env(migrated_db_url, config_key, tmp_path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPZONE_")}
    env.update({
        "DROPZONE_ENV_FILE": str(tmp_path / "absent.env"),
        "DROPZONE_DATABASE_URL": str(migrated_db_url),
        "DROPZONE_CONFIG_KEYS": config_key,
    })
    return env


def erp_sim(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DROPZONE, "erp-sim", *args], env=env, cwd=REPO, check=False, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def test_command_answers_a_filesystem_connection_once(sim_env, fs_target) -> None:  # type: ignore[no-untyped-def]
    good = export_file(fs_target.export_dir)
    refused = export_file(fs_target.export_dir, customer="1234")
    result = erp_sim("--connection", str(fs_target.connection_id), "--once", "--reject-customer", "1234",
                     "--reject-customer", "5678", env=sim_env)
    assert result.returncode == 0, result.stderr
    assert f"ACKED  {good} -> SO-000001" in result.stdout
    assert f"FAILED {refused} INVALID_CUSTOMER" in result.stdout
    assert "answered 2 export(s)" in result.stdout
    assert read_answer(fs_target.ack_dir, f"error_{refused}").error_code == "INVALID_CUSTOMER"


def test_command_answers_an_sftp_connection_after_the_delay(sim_env, ledger, openssh_server) -> None:  # type: ignore[no-untyped-def]
    config = openssh_server.config()
    connection_id = add_connection(ledger, uuid.uuid4(), config)
    export_dir = openssh_server.local_path(config["export_path"])
    ack_dir = openssh_server.local_path(config["ack_path"])
    name = export_file(export_dir)
    result = erp_sim("--connection", str(connection_id), "--once", "--delay", "0.5", env=sim_env)
    assert result.returncode == 0, result.stderr
    assert read_answer(ack_dir, f"ack_{name}").erp_order_id == "SO-000001"
    assert config["password"] not in result.stdout + result.stderr


def test_command_errors_are_one_clear_line(sim_env, ledger, tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = uuid.uuid4()
    no_acks = add_connection(ledger, uuid.uuid4(), {"mode": "filesystem", "export_path": str(tmp_path)})
    cases = [
        (["--connection", str(missing), "--once"], f"connection {missing} not found"),
        (["--connection", str(no_acks), "--once"], "no ack_path"),
    ]
    for args, needle in cases:
        result = erp_sim(*args, env=sim_env)
        assert result.returncode != 0 and needle in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout


# --- the pipeline, answered over SFTP ----------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_pipeline_over_sftp_is_acknowledged_by_the_simulator(client, run_worker, ledger, openssh_server) -> None:  # type: ignore[no-untyped-def]
    org_id = uuid.uuid4()
    raw = {**openssh_server.config(), "poll_interval_seconds": 1}
    connection_id = add_connection(ledger, org_id, raw)
    config = parse_connection_config(raw)
    sim = ErpSimulator(lambda: open_erp_side(config), ErpRules(reject_customers={"9999"}), interval_seconds=0.2).start()
    try:
        ok, refused = make_draft(org_id=org_id), make_draft(org_id=org_id)
        refused["customer"]["erp_customer_number"] = "9999"
        async with run_worker(client) as queue:
            for draft in (ok, refused):
                await start_export(client, erp_connection_id=connection_id, draft=draft, task_queue=queue)
            acked = await wait_for_state(client, ok["draft_order_id"], lambda s: s.status == "ACKED", timeout=60)
            failed = await wait_for_state(client, refused["draft_order_id"], lambda s: s.status == "FAILED", timeout=60)
        assert acked.erp_order_id is not None and acked.erp_order_id.startswith("SO-")
        assert failed.last_error is not None and failed.last_error.code == "INVALID_CUSTOMER"
        assert ledger.get_export(acked.export_id).erp_order_id == acked.erp_order_id
    finally:
        sim.stop()
    assert sim.error is None
