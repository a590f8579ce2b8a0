"""Config encryption keys: rotation, refusal to run without a key, and a row
under a key that is no longer configured."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from typer.testing import CliRunner

import starter.cli  # noqa: F401  (registers the commands)
from dropzone.connection_config import config_to_storable, parse_connection_config
from dropzone.connectors import DROPZONE_JSON_V1
from dropzone.crypto import ConfigCipher
from dropzone.errors import ConfigKeyError
from dropzone.ledger import Ledger, migrate
from starter.api import export_handle, start_export
from starter.cli.common import app
from tests.helpers import make_draft, wait_for_state

ROOT = Path(__file__).resolve().parents[1]


def fs_config(tmp_path: Path, name: str) -> dict:
    directory = tmp_path / name
    directory.mkdir()
    return config_to_storable(parse_connection_config({"mode": "filesystem", "export_path": str(directory)}))


def tokens(ledger: Ledger) -> dict[uuid.UUID, str]:
    with ledger.engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, config_encrypted FROM erp_connection")).all())


@pytest.fixture
def own_database(fresh_database_url) -> str:  # type: ignore[no-untyped-def]
    migrate(fresh_database_url)
    return fresh_database_url


def test_rotate_keys_re_encrypts_every_row_with_the_first_key(own_database, tmp_path):
    old, new = ConfigCipher.generate_key(), ConfigCipher.generate_key()
    before = Ledger.connect(own_database, ConfigCipher([old]), pool_size=1)
    configs = {before.add_connection(uuid.uuid4(), DROPZONE_JSON_V1, fs_config(tmp_path, f"c{i}")).id: i
               for i in range(3)}
    old_tokens = tokens(before)
    env = {"DROPZONE_ENV_FILE": str(tmp_path / "absent.env"), "DROPZONE_DATABASE_URL": own_database,
           "DROPZONE_CONFIG_KEYS": f"{new},{old}"}

    result = CliRunner().invoke(app, ["connections", "rotate-keys"], env=env)

    assert result.exit_code == 0, result.stderr
    assert "re-encrypted 3 connection config(s) with the first of 2 configured key(s)" in result.stdout
    assert "can be removed" in result.stdout
    assert old not in result.stdout + result.stderr and new not in result.stdout + result.stderr
    only_new = Ledger.connect(own_database, ConfigCipher([new]), pool_size=1)
    only_old = Ledger.connect(own_database, ConfigCipher([old]), pool_size=1)
    try:
        new_tokens = tokens(only_new)
        assert set(new_tokens) == set(configs)
        for cid, n in configs.items():
            assert new_tokens[cid] != old_tokens[cid]
            assert only_new.get_connection(cid).config["export_path"].endswith(f"c{n}")
            with pytest.raises(ConfigKeyError, match=str(cid)):
                only_old.get_connection(cid)
    finally:
        for ledger in (before, only_new, only_old):
            ledger.dispose()


def test_rotate_keys_changes_nothing_when_a_row_is_under_an_unknown_key(own_database, tmp_path):
    old, new, lost = (ConfigCipher.generate_key() for _ in range(3))
    ledger = Ledger.connect(own_database, ConfigCipher([old]), pool_size=1)
    orphan_ledger = Ledger.connect(own_database, ConfigCipher([lost]), pool_size=1)
    try:
        ledger.add_connection(uuid.uuid4(), DROPZONE_JSON_V1, fs_config(tmp_path, "a"))
        orphan = orphan_ledger.add_connection(uuid.uuid4(), DROPZONE_JSON_V1, fs_config(tmp_path, "b"))
        before = tokens(ledger)
        env = {"DROPZONE_ENV_FILE": str(tmp_path / "absent.env"), "DROPZONE_DATABASE_URL": own_database,
               "DROPZONE_CONFIG_KEYS": f"{new},{old}"}

        result = CliRunner().invoke(app, ["connections", "rotate-keys", "--json"], env=env)

        assert result.exit_code == 2
        assert result.stderr == (
            f"error: connection {orphan.id}: config cannot be decrypted with the configured keys\n"
        )
        assert tokens(ledger) == before  # all rows or none
    finally:
        ledger.dispose()
        orphan_ledger.dispose()


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL, check=False
    )


@pytest.fixture
def service_env(migrated_db_url, seaweedfs, tmp_path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "PATH": "/usr/bin:/bin",
        "DROPZONE_ENV_FILE": str(tmp_path / "absent.env"),
        "DROPZONE_DATABASE_URL": str(migrated_db_url),
        "DROPZONE_S3_ENDPOINT_URL": seaweedfs.endpoint_url,
        "DROPZONE_S3_BUCKET": seaweedfs.bucket,
        "DROPZONE_S3_ACCESS_KEY": seaweedfs.access_key,
        "DROPZONE_S3_SECRET_KEY": seaweedfs.secret_key,
        "DROPZONE_TEMPORAL_ADDRESS": "127.0.0.1:1",
    }


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-c", "import worker; worker.main()"],  # the dropzone-worker entrypoint
        [sys.executable, "-m", "starter.cli", "worker"],
        [sys.executable, "-m", "starter.cli", "connections", "list"],
    ],
    ids=["dropzone-worker", "dropzone worker", "connections list"],
)
def test_worker_and_cli_refuse_to_start_without_a_key(command, service_env):
    result = _run(command, service_env)
    assert result.returncode == 2, result
    assert "DROPZONE_CONFIG_KEYS is not set" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "polling task queue" not in result.stdout


def test_worker_refuses_a_malformed_key_without_printing_it(service_env):
    not_a_key = "Sentinel-Not-A-Fernet-Key-" + uuid.uuid4().hex
    result = _run([sys.executable, "-c", "import worker; worker.main()"],
                  {**service_env, "DROPZONE_CONFIG_KEYS": f"{ConfigCipher.generate_key()},{not_a_key}"})
    assert result.returncode == 2
    assert "DROPZONE_CONFIG_KEYS: key #2 of 2 is malformed" in result.stderr
    assert not_a_key not in result.stderr + result.stdout


@pytest.mark.asyncio(loop_scope="session")
async def test_a_row_under_a_removed_key_fails_the_export_naming_the_connection(
    client: Client, run_worker, ledger, migrated_db_url, tmp_path
):
    removed_key = ConfigCipher.generate_key()
    stale = Ledger.connect(migrated_db_url, ConfigCipher([removed_key]), pool_size=1)
    org_id = uuid.uuid4()
    try:
        connection = stale.add_connection(org_id, DROPZONE_JSON_V1, fs_config(tmp_path, "dz"))
    finally:
        stale.dispose()
    draft = make_draft(org_id=org_id)

    async with run_worker(client) as queue:  # the worker knows only the session's key
        await start_export(client, erp_connection_id=connection.id, draft=draft, task_queue=queue)
        state = await wait_for_state(client, draft["draft_order_id"], lambda s: s.status == "FAILED")
        history = await export_handle(client, draft["draft_order_id"]).fetch_history()

    assert state.last_error is not None
    assert state.last_error.code == "CONFIG_KEY_UNAVAILABLE"
    assert state.last_error.message == (
        f"connection {connection.id}: config cannot be decrypted with the configured keys"
    )
    assert removed_key not in history.to_json()
    started = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert started == [1], "a permanent error is not retried"
    assert list((tmp_path / "dz").iterdir()) == []
    assert ledger.list_exports(org_id=org_id) == []
