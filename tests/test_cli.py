"""The `dropzone` CLI as a user runs it: a real process, real servers, real exit codes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from starter.erp_sim import FilesystemErpSimulator
from tests.helpers import make_draft

pytestmark = pytest.mark.asyncio(loop_scope="session")

DROPZONE = [sys.executable, "-m", "starter.cli"]


@pytest.fixture
def cli_env(dropzone_env: dict[str, str]) -> dict[str, str]:
    return dropzone_env


async def dropzone(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        *DROPZONE, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1],
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    return subprocess.CompletedProcess(args, proc.returncode or 0, stdout.decode(), stderr.decode())


def assert_clean_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stderr, result.stderr


async def test_unreadable_draft_file(cli_env, tmp_path):
    result = await dropzone("export", str(tmp_path / "nope.json"), "--connection", str(uuid.uuid4()), env=cli_env)
    assert_clean_error(result, "cannot read draft file", "nope.json")


async def test_invalid_draft_names_every_field_and_writes_nothing(cli_env, tmp_path, ledger):
    draft = make_draft(org_id=uuid.uuid4())
    draft["lines"][1]["qty"] = 0
    draft["header"]["currency"] = "XYZ"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(draft))
    result = await dropzone("export", str(path), "--connection", str(uuid.uuid4()), env=cli_env)
    assert_clean_error(result, "lines[1].qty", "header.currency")
    assert ledger.list_exports(draft_order_id=uuid.UUID(draft["draft_order_id"])) == []


async def test_unknown_connection(cli_env, tmp_path):
    path = tmp_path / "draft.json"
    path.write_text(json.dumps(make_draft(org_id=uuid.uuid4())))
    missing = uuid.uuid4()
    result = await dropzone("export", str(path), "--connection", str(missing), env=cli_env)
    assert_clean_error(result, f"connection {missing} not found")


async def test_unreachable_database_names_it_without_password(cli_env, tmp_path):
    env = {**cli_env, "DROPZONE_DATABASE_URL": "postgresql+psycopg://orderflow:hunter2@127.0.0.1:1/orderflow"}
    result = await dropzone("connections", "list", env=env)
    assert_clean_error(result, "database unavailable", "127.0.0.1:1/orderflow")
    assert "hunter2" not in result.stderr + result.stdout


async def test_unreachable_temporal(cli_env, fs_target, tmp_path):
    path = tmp_path / "draft.json"
    path.write_text(json.dumps(make_draft(org_id=fs_target.org_id)))
    env = {**cli_env, "DROPZONE_TEMPORAL_ADDRESS": "127.0.0.1:1"}
    result = await dropzone("export", str(path), "--connection", str(fs_target.connection_id), env=env)
    assert_clean_error(result, "cannot reach Temporal at 127.0.0.1:1")


async def test_missing_config_keys_refuses_to_start(cli_env):
    env = {k: v for k, v in cli_env.items() if k != "DROPZONE_CONFIG_KEYS"}
    result = await dropzone("connections", "list", env=env)
    assert_clean_error(result, "DROPZONE_CONFIG_KEYS is not set")


async def test_connections_add_export_wait_status_retry(cli_env, client, run_worker, tmp_path):
    org_id = uuid.uuid4()
    export_dir, ack_dir = tmp_path / "exports", tmp_path / "acks"
    export_dir.mkdir()
    ack_dir.mkdir()
    added = await dropzone(
        "connections", "add", "--org", str(org_id), "--mode", "filesystem", "--export-path", str(export_dir),
        "--ack-path", str(ack_dir), "--poll-interval", "1", "--json", env=cli_env,
    )
    assert added.returncode == 0, added.stderr
    connection_id = json.loads(added.stdout)["id"]

    listed = await dropzone("connections", "list", "--json", env=cli_env)
    assert connection_id in [row["id"] for row in json.loads(listed.stdout)]
    tested = await dropzone("connections", "test", connection_id, env=cli_env)
    assert tested.returncode == 0 and "ok" in tested.stdout, tested.stderr

    draft = make_draft(org_id=org_id)
    path = tmp_path / "draft.json"
    path.write_text(json.dumps(draft))
    simulator = FilesystemErpSimulator(export_dir, ack_dir).start()
    try:
        async with run_worker(client) as queue:
            env = {**cli_env, "DROPZONE_TASK_QUEUE": queue}
            exported = await dropzone("export", str(path), "--connection", connection_id, "--wait", env=env)
            assert exported.returncode == 0, exported.stderr
            assert "status: ACKED" in exported.stdout and "erp_order_id: SO-000001" in exported.stdout

            status = await dropzone("status", draft["draft_order_id"], "--json", env=env)
            attempts = json.loads(status.stdout)["attempts"]
            assert [(a["attempt"], a["status"], a["erp_order_id"]) for a in attempts] == [(1, "ACKED", "SO-000001")]
            assert (export_dir / attempts[0]["filename"]).is_file()

            plain = await dropzone("status", draft["draft_order_id"], env=env)
            assert plain.stdout.splitlines()[0].split("\t")[:3] == ["attempt", "file", "status"]

            retry = await dropzone("retry", draft["draft_order_id"], env=env)
            assert_clean_error(retry, "is ACKED, not FAILED")
    finally:
        simulator.stop()
