"""SFTP host keys: shown by `dropzone connections test`, pinned only with --trust SHA256:…,
and a changed key stops an export before any authentication, for good.

`--trust` takes the fingerprint the operator approved: a wrong one pins nothing
(the stored config stays byte for byte the same) and the server's log shows no
authentication attempt; replacing an existing pin needs --replace-pin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import text
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from typer.testing import CliRunner

import starter.cli  # noqa: F401  (registers the commands)
from dropzone.connection_config import parse_connection_config
from dropzone.errors import AuthenticationError
from dropzone.transports.sftp import SftpTransport
from starter.api import export_handle, start_export
from starter.cli.common import app
from starter.cli.hostkeys import known_hosts_line, pin_fingerprint
from tests.conftest import add_connection
from tests.helpers import eventually_sync, make_draft, wait_for_state


def other_host_key_line() -> str:
    """The public key line of a key no server here has."""
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def other_key() -> tuple[str, str]:
    """(public key line, fingerprint) of a key no server here has."""
    line = other_host_key_line()
    return line, pin_fingerprint(line)


@pytest.fixture
def cli_env(migrated_db_url, config_key, tmp_path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "DROPZONE_ENV_FILE": str(tmp_path / "absent.env"),
        "DROPZONE_DATABASE_URL": str(migrated_db_url),
        "DROPZONE_CONFIG_KEYS": config_key,
    }


def invoke(env: dict[str, str], *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), env=env)


def test_known_hosts_line_uses_brackets_only_for_other_ports():
    assert known_hosts_line("sftp.example.com", 22, "ssh-ed25519 AAAAC3") == "sftp.example.com ssh-ed25519 AAAAC3"
    assert known_hosts_line("10.0.0.5", 2222, "ssh-ed25519 AAAAC3") == "[10.0.0.5]:2222 ssh-ed25519 AAAAC3"


def test_test_shows_the_key_and_trust_pins_it(openssh_server, ledger, cli_env, tmp_path):
    server = openssh_server
    assert server.port != 22
    config = server.config()
    config.pop("host_key")
    (tmp_path / "conn.json").write_text(json.dumps({k: v for k, v in config.items() if k != "password"}))
    (tmp_path / "pw").write_text(server.password)
    os.chmod(tmp_path / "pw", 0o600)
    added = invoke(cli_env, "connections", "add", "--org", str(uuid.uuid4()), "--config-file",
                   str(tmp_path / "conn.json"), "--password-file", str(tmp_path / "pw"))
    assert added.exit_code == 0, added.stderr
    assert "host key not pinned yet" in added.stdout
    (summary,) = ledger.list_connections()
    cid = str(summary.id)
    expected_line = f"[{server.host}]:{server.port} {server.host_key_line}"

    untrusted = invoke(cli_env, "connections", "test", cid)
    assert untrusted.exit_code == 2
    assert f"host key of {server.host}:{server.port}: ssh-ed25519 {server.host_key_fingerprint}" in untrusted.stdout
    assert f"known_hosts: {expected_line}" in untrusted.stdout
    assert "host key not trusted yet" in untrusted.stderr and "--trust" in untrusted.stderr
    assert ledger.get_connection(cid).config.get("host_key") is None
    assert ledger.get_connection(cid).last_test_success is False

    # The known_hosts line is one OpenSSH itself reads, with the same fingerprint.
    (tmp_path / "known_hosts").write_text(expected_line + "\n")
    keygen = subprocess.run([shutil.which("ssh-keygen") or "ssh-keygen", "-l", "-F", f"[{server.host}]:{server.port}",
                             "-f", str(tmp_path / "known_hosts")], capture_output=True, text=True, check=True)
    assert server.host_key_fingerprint in keygen.stdout

    trusted = invoke(cli_env, "connections", "test", cid, "--trust", server.host_key_fingerprint)
    assert trusted.exit_code == 0, trusted.stderr
    assert "host key pinned" in trusted.stdout and f"connection {cid} ok" in trusted.stdout
    record = ledger.get_connection(cid)
    assert record.config["host_key"] == server.host_key_line and record.last_test_success is True

    again = invoke(cli_env, "connections", "test", cid, "--json")
    assert again.exit_code == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["ok"] is True and report["pinned_fingerprint"] == server.host_key_fingerprint
    assert report["host_key"] == {"type": "ssh-ed25519", "fingerprint": server.host_key_fingerprint,
                                  "known_hosts": expected_line}


def test_test_reports_a_changed_host_key_and_fails(openssh_server, ledger, cli_env):
    org_id = uuid.uuid4()
    cid = add_connection(ledger, org_id, openssh_server.config(host_key=other_host_key_line()))
    result = invoke(cli_env, "connections", "test", str(cid))
    assert result.exit_code == 2
    assert "not the key shown above" in result.stdout
    assert "host key mismatch" in result.stderr
    assert ledger.get_connection(cid).last_test_success is False


@pytest.mark.asyncio(loop_scope="session")
async def test_changed_host_key_fails_the_export_before_authentication(
    client: Client, run_worker, openssh_server, ledger
):
    # A username of its own: the server's log then tells whether anyone tried to log in as it.
    username = f"dzpin{uuid.uuid4().hex[:10]}"
    org_id = uuid.uuid4()
    config = openssh_server.config(username=username, host_key=other_host_key_line(), poll_interval_seconds=1)
    connection_id = add_connection(ledger, org_id, config)
    draft = make_draft(org_id=org_id)

    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=connection_id, draft=draft, task_queue=queue)
        state = await wait_for_state(client, draft["draft_order_id"], lambda s: s.status == "FAILED")
        history = await export_handle(client, draft["draft_order_id"]).fetch_history()

    assert state.last_error is not None and state.last_error.code == "HOST_KEY_MISMATCH"
    assert openssh_server.host_key_fingerprint in state.last_error.message  # what the operator must check
    row = ledger.get_export(state.export_id)
    assert row.status == "FAILED" and row.error_json["code"] == "HOST_KEY_MISMATCH"
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    deliver_attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and scheduled[e.activity_task_started_event_attributes.scheduled_event_id] == "deliver"
    ]
    assert deliver_attempts == [1], "a host key mismatch is permanent: never retried"
    assert openssh_server.auth_attempts(username) == 0, "the untrusted server saw an authentication request"
    assert list(openssh_server.local_path(config["export_path"]).iterdir()) == []

    # Control: with the right pin the same user does reach authentication, and the log shows it.
    right = parse_connection_config({**config, "host_key": openssh_server.host_key_line})
    with pytest.raises(AuthenticationError):
        SftpTransport.connect(right)
    assert openssh_server.auth_attempts(username) > 0


# --- --trust SHA256:… pins only the approved key ------------------------------------


def stored_token(ledger, cid: uuid.UUID) -> str:  # type: ignore[no-untyped-def]
    with ledger.engine.connect() as conn:
        return conn.execute(text("SELECT config_encrypted FROM erp_connection WHERE id = :id"), {"id": cid}).scalar_one()


def test_a_wrong_fingerprint_pins_nothing_and_sends_no_credentials(openssh_server, ledger, cli_env):
    server = openssh_server
    # A user of its own: the server's log then tells whether anyone tried to log in as it.
    username = f"dztrust{uuid.uuid4().hex[:10]}"
    cid = add_connection(ledger, uuid.uuid4(), server.config(username=username, host_key=None))
    before = stored_token(ledger, cid)
    _, approved = other_key()  # what a man in the middle's key would not match

    result = invoke(cli_env, "connections", "test", str(cid), "--trust", approved)

    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert server.host_key_fingerprint in result.stderr and approved in result.stderr
    assert "nothing pinned" in result.stderr
    assert stored_token(ledger, cid) == before  # not even re-encrypted
    assert ledger.get_connection(cid).config.get("host_key") is None
    assert server.auth_attempts(username) == 0, "the server saw an authentication request"

    # Control: the approved fingerprint pins, and the probe that follows does reach
    # authentication (this user does not exist there), which the log shows.
    pinned = invoke(cli_env, "connections", "test", str(cid), "--trust", server.host_key_fingerprint)
    assert "host key pinned" in pinned.stdout, pinned.stdout
    assert pinned.exit_code != 0  # the login itself fails
    assert ledger.get_connection(cid).config["host_key"] == server.host_key_line
    eventually_sync(lambda: server.auth_attempts(username), what=f"sshd's log showing a login attempt as {username}")


def test_the_approved_fingerprint_pins_and_the_probe_logs_in(openssh_server, ledger, cli_env):
    cid = add_connection(ledger, uuid.uuid4(), openssh_server.config(host_key=None))
    result = invoke(cli_env, "connections", "test", str(cid), "--trust", openssh_server.host_key_fingerprint)
    assert result.exit_code == 0, result.stderr
    assert f"host key pinned: {openssh_server.host_key_fingerprint}" in result.stdout
    assert f"connection {cid} ok" in result.stdout
    record = ledger.get_connection(cid)
    assert record.config["host_key"] == openssh_server.host_key_line and record.last_test_success is True


def test_replacing_a_different_pin_needs_replace_pin(openssh_server, ledger, cli_env):
    old_line, old_fingerprint = other_key()
    cid = add_connection(ledger, uuid.uuid4(), openssh_server.config(host_key=old_line))
    before = stored_token(ledger, cid)
    new = openssh_server.host_key_fingerprint

    refused = invoke(cli_env, "connections", "test", str(cid), "--trust", new)
    assert refused.exit_code == 2
    assert old_fingerprint in refused.stderr and new in refused.stderr and "--replace-pin" in refused.stderr
    assert stored_token(ledger, cid) == before

    replaced = invoke(cli_env, "connections", "test", str(cid), "--trust", new, "--replace-pin")
    assert replaced.exit_code == 0, replaced.stderr
    assert f"host key pin replaced: {old_fingerprint} -> {new}" in replaced.stdout
    assert ledger.get_connection(cid).config["host_key"] == openssh_server.host_key_line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trust"], "requires an argument"),
        (["--trust", "yes"], "--trust takes the fingerprint you approved"),
        (["--trust", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"], "--trust takes the fingerprint you approved"),
        (["--replace-pin"], "--replace-pin needs --trust SHA256:"),
    ],
    ids=["bare", "not-a-fingerprint", "key-line", "replace-alone"],
)
def test_bad_trust_arguments_are_refused_before_contacting_the_server(
    args, message, openssh_server, ledger, cli_env
):
    username = f"dzarg{uuid.uuid4().hex[:10]}"
    cid = add_connection(ledger, uuid.uuid4(), openssh_server.config(username=username, host_key=None))
    before = stored_token(ledger, cid)
    result = invoke(cli_env, "connections", "test", str(cid), *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert stored_token(ledger, cid) == before
    assert ledger.get_connection(cid).last_test_at is None  # nothing was contacted, nothing recorded


# --- the same path for an FTPS server's certificate ----------------------------------


def test_ftps_test_shows_the_certificate_and_trust_pins_only_the_approved_one(ftps_server, ledger, cli_env):
    server = ftps_server
    raw = server.config(ca_bundle=None)  # nothing vouches for it: its CA is not among the system's
    cid = add_connection(ledger, uuid.uuid4(), raw)
    before, token = len(server.commands()), stored_token(ledger, cid)

    untrusted = invoke(cli_env, "connections", "test", str(cid))
    assert untrusted.exit_code == 2
    assert f"certificate of {server.host}:{server.port}: {server.fingerprint}" in untrusted.stdout
    assert "certificate not trusted yet" in untrusted.stderr and "--trust" in untrusted.stderr
    assert ledger.get_connection(cid).last_test_success is False

    _, other = other_key()
    wrong = invoke(cli_env, "connections", "test", str(cid), "--trust", other)
    assert wrong.exit_code == 2 and "nothing pinned" in wrong.stderr
    assert server.fingerprint in wrong.stderr and other in wrong.stderr
    assert stored_token(ledger, cid) == token  # not even re-encrypted
    assert set(server.commands()[before:]) == {"AUTH"}, "the password left before a pin was approved"

    trusted = invoke(cli_env, "connections", "test", str(cid), "--trust", server.fingerprint)
    assert trusted.exit_code == 0, trusted.stderr
    assert f"certificate pinned: {server.fingerprint}" in trusted.stdout and f"connection {cid} ok" in trusted.stdout
    record = ledger.get_connection(cid)
    assert record.config["server_fingerprint"] == server.fingerprint and record.last_test_success is True
    assert {"USER", "STOR", "RETR", "DELE"} <= set(server.commands()[before:])  # the probe, against the pin

    again = invoke(cli_env, "connections", "test", str(cid), "--json")
    assert again.exit_code == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["ok"] is True and report["pinned_fingerprint"] == server.fingerprint
    assert report["certificate"] == {"fingerprint": server.fingerprint}
    assert server.password not in untrusted.stdout + wrong.stderr + trusted.stdout + again.stdout


def test_ftps_replacing_a_different_pin_needs_replace_pin(ftps_server, ledger, cli_env):
    old = "SHA256:" + "A" * 43
    cid = add_connection(ledger, uuid.uuid4(), ftps_server.config(ca_bundle=None, server_fingerprint=old))
    token = stored_token(ledger, cid)

    refused = invoke(cli_env, "connections", "test", str(cid), "--trust", ftps_server.fingerprint)
    assert refused.exit_code == 2
    assert old in refused.stderr and ftps_server.fingerprint in refused.stderr and "--replace-pin" in refused.stderr
    assert stored_token(ledger, cid) == token

    replaced = invoke(cli_env, "connections", "test", str(cid), "--trust", ftps_server.fingerprint, "--replace-pin")
    assert replaced.exit_code == 0, replaced.stderr
    assert f"certificate pin replaced: {old} -> {ftps_server.fingerprint}" in replaced.stdout
    assert ledger.get_connection(cid).config["server_fingerprint"] == ftps_server.fingerprint


def test_trust_on_a_connection_without_a_certificate_is_refused(plain_ftp_server, ledger, cli_env):
    cid = add_connection(ledger, uuid.uuid4(), plain_ftp_server.config())
    token = stored_token(ledger, cid)
    result = invoke(cli_env, "connections", "test", str(cid), "--trust", "SHA256:" + "A" * 43)
    assert result.exit_code == 2 and "nothing to pin" in result.stderr
    assert stored_token(ledger, cid) == token and ledger.get_connection(cid).last_test_at is None
