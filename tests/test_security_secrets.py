"""Secrets appear nowhere but in the encrypted config column.

Sentinels: a password string made for this test, a private key generated in
this test (its PEM text and every base64 body line of it), the SFTP server's
real password and private key used for a successful login, and the object
store's secret key. Two exports run end to end against OpenSSH — one ACKED
(key login), one refused (AUTH_FAILED, with the generated key and the sentinel
password) — while every log record at DEBUG (root, paramiko, botocore,
temporalio, …) is captured. Then the whole workflow histories (every event,
serialised to raw protobuf bytes and to JSON), query answers, ledger rows,
CLI output and the reprs of settings and configs are searched: zero hits.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from temporalio.client import Client
from typer.testing import CliRunner

import starter.cli  # noqa: F401  (registers the commands)
from dropzone.connection_config import parse_connection_config
from dropzone.crypto import ConfigCipher
from dropzone.settings import Settings
from starter.api import export_handle, export_status, start_export
from starter.cli.common import app
from tests.helpers import ack_body, make_draft, wait_for_state, write_ack_atomically

SENTINEL_PASSWORD = f"Sentinel-Pa55-{uuid.uuid4().hex}"
LOGGERS = ("", "paramiko", "paramiko.transport", "botocore", "boto3", "urllib3", "s3transfer", "temporalio",
           "sqlalchemy.engine", "dropzone", "activities", "workflows", "asyncio")


def generated_private_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode("ascii")


def key_sentinels(pem: str) -> list[str]:
    """The whole PEM and each base64 body line (a leak of one line is a leak)."""
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    assert body, "not a PEM key"
    return [pem.strip(), *body]


class Everything(logging.Handler):
    """Keeps every record in every form a log sink could write it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.formatter_ = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.texts.append(self.formatter_.format(record))
        except (TypeError, ValueError, KeyError) as exc:  # an unformattable record is a bug worth seeing
            self.texts.append(f"UNFORMATTABLE {record.name}: {exc!r}")
        # `extra=` fields and raw args, as a JSON log handler would write them.
        self.texts.append(repr({k: v for k, v in record.__dict__.items() if k not in ("msg", "args")}))
        self.texts.append(repr(record.msg) + repr(record.args))


@pytest.fixture
def all_logs() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    previous = {name: logging.getLogger(name).level for name in LOGGERS}
    root.addHandler(handler)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


def secret_file(path: Path, text: str) -> str:
    path.write_text(text)
    os.chmod(path, 0o600)
    return str(path)


def find_leaks(haystacks: dict[str, str | bytes], sentinels: list[str]) -> list[str]:
    leaks = []
    for where, hay in haystacks.items():
        for sentinel in sentinels:
            needle: str | bytes = sentinel.encode() if isinstance(hay, bytes) else sentinel
            if needle in hay:  # type: ignore[operator]
                leaks.append(f"{sentinel[:12]}… in {where}")
    return leaks


async def history_haystacks(client: Client, draft_order_id: str) -> dict[str, str | bytes]:
    history = await export_handle(client, draft_order_id).fetch_history()
    assert len(history.events) > 5
    found: dict[str, str | bytes] = {f"history {draft_order_id} (json)": history.to_json()}
    for event in history.events:
        found[f"history {draft_order_id} event {event.event_id} (bytes)"] = event.SerializeToString()
    return found


@pytest.mark.asyncio(loop_scope="session")
async def test_no_secret_in_history_logs_ledger_or_cli(
    client: Client, run_worker, openssh_server, ledger, seaweedfs, migrated_db_url, config_key, tmp_path, all_logs
):
    keys = openssh_server.keys
    rogue_key = generated_private_key()
    sentinels = [
        SENTINEL_PASSWORD,
        *key_sentinels(rogue_key),
        *key_sentinels(keys.ed25519),
        openssh_server.password,
        seaweedfs.secret_key,
        config_key,
    ]
    cli_env = {
        "DROPZONE_ENV_FILE": str(tmp_path / "absent.env"),
        "DROPZONE_DATABASE_URL": str(migrated_db_url),
        "DROPZONE_CONFIG_KEYS": config_key,
    }
    runner = CliRunner()
    outputs: dict[str, str | bytes] = {}

    def cli(name: str, *args: str, ok: bool = True) -> str:
        result = runner.invoke(app, list(args), env=cli_env)
        outputs[f"cli {name} stdout"] = result.stdout
        outputs[f"cli {name} stderr"] = result.stderr
        assert (result.exit_code == 0) == ok, (name, result.stdout, result.stderr)
        return result.stdout

    # Both connections are added the way an operator would: secrets from 0600 files.
    good_org, bad_org = uuid.uuid4(), uuid.uuid4()
    base = openssh_server.config(poll_interval_seconds=1)
    public = {k: v for k, v in base.items() if k != "password"}
    (tmp_path / "conn.json").write_text(json.dumps(public))
    added_good = json.loads(cli(
        "add good", "connections", "add", "--org", str(good_org), "--config-file", str(tmp_path / "conn.json"),
        "--ssh-key-file", secret_file(tmp_path / "id_good", keys.ed25519),
        "--password-file", secret_file(tmp_path / "pw_good", openssh_server.password + "\n"), "--json",
    ))
    added_bad = json.loads(cli(
        "add bad", "connections", "add", "--org", str(bad_org), "--config-file", str(tmp_path / "conn.json"),
        "--ssh-key-file", secret_file(tmp_path / "id_rogue", rogue_key),
        "--password-file", secret_file(tmp_path / "pw_rogue", SENTINEL_PASSWORD), "--json",
    ))
    assert added_bad["config"]["password"] == "***" and added_bad["config"]["ssh_key"] == "***"
    good_id, bad_id = added_good["id"], added_bad["id"]
    ack_dir = openssh_server.local_path(base["ack_path"])

    good_draft, bad_draft = make_draft(org_id=good_org), make_draft(org_id=bad_org)
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=uuid.UUID(good_id), draft=good_draft, task_queue=queue)
        await start_export(client, erp_connection_id=uuid.UUID(bad_id), draft=bad_draft, task_queue=queue)
        sent = await wait_for_state(client, good_draft["draft_order_id"], lambda s: s.waiting_for == "ack")
        write_ack_atomically(ack_dir, f"ack_{sent.filename}", ack_body("SO-SECRET-TEST"))
        acked = await wait_for_state(client, good_draft["draft_order_id"], lambda s: s.status == "ACKED")
        failed = await wait_for_state(client, bad_draft["draft_order_id"], lambda s: s.status == "FAILED")
        assert failed.last_error is not None and failed.last_error.code == "AUTH_FAILED"
        outputs["status good"] = acked.model_dump_json()
        outputs["status bad"] = (await export_status(client, bad_draft["draft_order_id"])).model_dump_json()
        histories = {
            **await history_haystacks(client, good_draft["draft_order_id"]),
            **await history_haystacks(client, bad_draft["draft_order_id"]),
        }

    cli("list", "connections", "list", "--json")
    cli("list plain", "connections", "list")
    cli("test good", "connections", "test", good_id, "--json")
    cli("test bad", "connections", "test", bad_id, "--json", ok=False)
    cli("test bad plain", "connections", "test", bad_id, ok=False)
    assert "AUTH_FAILED" in outputs["cli test bad stderr"] or "authentication failed" in outputs["cli test bad stderr"]

    rows = {
        f"ledger row {row.id}": repr(row) + json.dumps(row.model_dump(mode="json"))
        for row in ledger.list_exports(limit=1000)
    }
    assert len(rows) == 2
    connections = {f"connection record {cid}": repr(ledger.get_connection(cid)) for cid in (good_id, bad_id)}

    # The capture really saw the libraries at DEBUG (else "no leak" would prove nothing).
    logged = "\n".join(all_logs.texts)
    assert "paramiko.transport" in logged and "botocore" in logged and "temporalio" in logged
    assert "Authentication (publickey) failed" in logged or "Authentication (password) failed" in logged

    haystacks = {**histories, **outputs, **rows, **connections, "logs": logged}
    assert find_leaks(haystacks, sentinels) == []


def test_reprs_of_settings_configs_and_ciphers_hide_secrets(config_key):
    pem = generated_private_key()
    sentinels = [SENTINEL_PASSWORD, *key_sentinels(pem), config_key, "Db-Sentinel-9", "S3-Sentinel-9"]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url="postgresql+psycopg://orderflow:Db-Sentinel-9@db.example:5432/orderflow",
        s3_secret_key="S3-Sentinel-9",
        config_keys=f"{config_key},{ConfigCipher.generate_key()}",
    )
    config = parse_connection_config({
        "mode": "sftp", "host": "sftp.example.com", "username": "orderflow", "password": SENTINEL_PASSWORD,
        "ssh_key": pem, "ssh_key_passphrase": SENTINEL_PASSWORD, "export_path": "/dropzone/exports",
    })
    shown = {
        "repr(Settings)": repr(settings),
        "str(Settings)": str(settings),
        "Settings json": settings.model_dump_json(),
        "database_label": settings.database_label(),
        "repr(SftpConfig)": repr(config),
        "str(SftpConfig)": str(config),
        "SftpConfig json": config.model_dump_json(),
        "repr(ConfigCipher)": repr(ConfigCipher(settings.config_key_list())),
    }
    assert "Db-Sentinel-9" in settings.require_database_url()  # the secret is there, just not shown
    assert find_leaks(shown, sentinels) == []


def test_an_invalid_config_names_fields_without_quoting_secrets():
    from dropzone.errors import InvalidConfigError

    with pytest.raises(InvalidConfigError) as caught:
        parse_connection_config({
            "mode": "sftp", "host": "bad host!", "username": "u", "password": SENTINEL_PASSWORD,
            "ssh_key": SENTINEL_PASSWORD, "export_path": "relative/path",
        })
    message = caught.value.message
    assert "ssh_key" in message and "host" in message and "export_path" in message
    assert SENTINEL_PASSWORD not in message
    assert SENTINEL_PASSWORD not in repr(caught.value.__context__) + repr(caught.value.__cause__)
