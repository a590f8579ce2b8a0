"""Config encryption keys: rotation, refusal to run without a key, and a row
under a key that is no longer configured; object storage keys: given
explicitly, or the machine's own only when that is chosen; a config copied
onto another row is refused."""

from __future__ import annotations

import json
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
import worker
from dropzone.connection_config import config_to_storable, parse_connection_config
from dropzone.connectors import DROPZONE_JSON_V1
from dropzone.crypto import ConfigCipher
from dropzone.errors import ConfigBindingError, ConfigKeyError, InvalidConfigError
from dropzone.ledger import Ledger, migrate
from dropzone.settings import Settings
from starter.api import export_handle, start_export
from starter.cli.common import app
from tests.helpers import make_draft, sha256_of, wait_for_state

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


# --- object storage credentials: explicit keys, or the machine's only on request ----


@pytest.mark.parametrize(
    ("blank", "named"),
    [
        (("DROPZONE_S3_ACCESS_KEY", "DROPZONE_S3_SECRET_KEY"), "DROPZONE_S3_ACCESS_KEY and DROPZONE_S3_SECRET_KEY are"),
        (("DROPZONE_S3_SECRET_KEY",), "DROPZONE_S3_SECRET_KEY is"),
    ],
    ids=["both", "secret"],
)
@pytest.mark.parametrize("entry", ["dropzone-worker", "dropzone export"])
def test_empty_s3_keys_are_refused_naming_the_setting(entry, blank, named, service_env, tmp_path):
    draft = tmp_path / "draft.json"
    draft.write_text(json.dumps(make_draft(org_id=uuid.uuid4())))
    command = {
        "dropzone-worker": [sys.executable, "-c", "import worker; worker.main()"],
        "dropzone export": [sys.executable, "-m", "starter.cli", "export", str(draft), "--connection", str(uuid.uuid4())],
    }[entry]
    env = {**service_env, "DROPZONE_CONFIG_KEYS": ConfigCipher.generate_key(),
           # What boto3 would otherwise pick up silently from the machine:
           "AWS_ACCESS_KEY_ID": service_env["DROPZONE_S3_ACCESS_KEY"],
           "AWS_SECRET_ACCESS_KEY": service_env["DROPZONE_S3_SECRET_KEY"]}
    env.update(dict.fromkeys(blank, ""))
    result = _run(command, env)
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"{named} not set" in result.stderr and "DROPZONE_S3_USE_AMBIENT_CREDENTIALS=true" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_ambient_s3_credentials_only_when_chosen(seaweedfs, migrated_db_url, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    base = {"database_url": str(migrated_db_url), "config_keys": ConfigCipher.generate_key(),
            "s3_endpoint_url": seaweedfs.endpoint_url, "s3_bucket": seaweedfs.bucket}

    chosen = worker.build_adapters(Settings(**base, s3_use_ambient_credentials=True))  # type: ignore[arg-type]
    explicit = worker.build_adapters(Settings(**base, s3_access_key=seaweedfs.access_key,  # type: ignore[arg-type]
                                              s3_secret_key=seaweedfs.secret_key))
    try:
        # boto3 was given no keys and found them in the environment, as on an instance role.
        assert chosen.store._client._request_signer._credentials.method == "env"
        assert explicit.store._client._request_signer._credentials.method == "explicit"
        key = f"exports/{uuid.uuid4()}/ambient.json"
        chosen.store.put(key, b"{}", sha256=sha256_of(b"{}"), size=2)
        assert explicit.store.head(key).size == 2
    finally:
        chosen.close()
        explicit.close()

    with pytest.raises(InvalidConfigError, match="DROPZONE_S3_USE_AMBIENT_CREDENTIALS=true and DROPZONE_S3_ACCESS_KEY"):
        worker.build_adapters(Settings(**base, s3_use_ambient_credentials=True,  # type: ignore[arg-type]
                                       s3_access_key=seaweedfs.access_key, s3_secret_key=seaweedfs.secret_key))


# --- each encrypted config is bound to its row ----------------------------------------


def swap_configs(ledger: Ledger, a: uuid.UUID, b: uuid.UUID) -> None:
    """What a wrong restore, a bad migration or someone with database access could do."""
    with ledger.engine.begin() as conn:
        conn.execute(text(
            "UPDATE erp_connection SET config_encrypted = CASE id WHEN :a THEN "
            "(SELECT config_encrypted FROM erp_connection WHERE id = :b) ELSE "
            "(SELECT config_encrypted FROM erp_connection WHERE id = :a) END WHERE id IN (:a, :b)"
        ), {"a": a, "b": b})


def mismatch(cid: uuid.UUID, other: uuid.UUID) -> str:
    return (f"connection {cid}: stored config was encrypted for connection {other} (config_encrypted copied "
            "between rows); refusing to use it: restore this row's own config_encrypted")


@pytest.mark.asyncio(loop_scope="session")
async def test_a_config_swapped_between_rows_is_refused(client: Client, run_worker, ledger, config_key, migrated_db_url,
                                                       tmp_path):
    org_a, org_b = uuid.uuid4(), uuid.uuid4()
    a = ledger.add_connection(org_a, DROPZONE_JSON_V1, fs_config(tmp_path, "a")).id
    b = ledger.add_connection(org_b, DROPZONE_JSON_V1, fs_config(tmp_path, "b")).id
    swap_configs(ledger, a, b)

    with pytest.raises(ConfigBindingError) as raised:
        ledger.get_connection(a)
    assert raised.value.message == mismatch(a, b) and raised.value.code == "CONFIG_ROW_MISMATCH"

    env = {"DROPZONE_ENV_FILE": str(tmp_path / "absent.env"), "DROPZONE_DATABASE_URL": migrated_db_url,
           "DROPZONE_CONFIG_KEYS": config_key}
    result = CliRunner().invoke(app, ["connections", "test", str(b)], env=env)
    assert result.exit_code == 2
    assert result.stderr == f"error: {mismatch(b, a)}\n"

    draft = make_draft(org_id=org_a)
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=a, draft=draft, task_queue=queue)
        state = await wait_for_state(client, draft["draft_order_id"], lambda s: s.status == "FAILED")
    assert state.last_error is not None
    assert state.last_error.code == "CONFIG_ROW_MISMATCH" and state.last_error.message == mismatch(a, b)
    # Org A's order went nowhere, least of all into org B's dropzone.
    assert list((tmp_path / "a").iterdir()) == [] and list((tmp_path / "b").iterdir()) == []


def test_rows_written_before_the_binding_still_decrypt_and_rotate_keys_binds_them(own_database, tmp_path):
    key = ConfigCipher.generate_key()
    cipher = ConfigCipher([key])
    ledger = Ledger.connect(own_database, cipher, pool_size=1)
    try:
        a = ledger.add_connection(uuid.uuid4(), DROPZONE_JSON_V1, fs_config(tmp_path, "a")).id
        b = ledger.add_connection(uuid.uuid4(), DROPZONE_JSON_V1, fs_config(tmp_path, "b")).id
        with ledger.engine.begin() as conn:  # as an older release wrote them: the bare config
            for cid, name in ((a, "a"), (b, "b")):
                conn.execute(text("UPDATE erp_connection SET config_encrypted = :t WHERE id = :id"),
                             {"t": cipher.encrypt(fs_config(tmp_path, f"{name}-old")), "id": cid})
        assert ledger.get_connection(a).config["export_path"].endswith("a-old")

        env = {"DROPZONE_ENV_FILE": str(tmp_path / "absent.env"), "DROPZONE_DATABASE_URL": own_database,
               "DROPZONE_CONFIG_KEYS": key}
        result = CliRunner().invoke(app, ["connections", "rotate-keys"], env=env)
        assert result.exit_code == 0, result.stderr

        assert ledger.get_connection(a).config["export_path"].endswith("a-old")
        swap_configs(ledger, a, b)
        with pytest.raises(ConfigBindingError, match=str(a)):
            ledger.get_connection(a)
    finally:
        ledger.dispose()
