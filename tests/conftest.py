"""Real servers for the whole suite, started once per session on 127.0.0.1."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dropzone.connection_config import config_to_storable, parse_connection_config
from dropzone.connectors import DROPZONE_JSON_V1
from dropzone.ledger import Ledger
from dropzone.object_store import ObjectStore
from dropzone.transports.sftp import SftpConnectionPool

# A suite started in the background by a non-interactive shell (`cmd &`) inherits SIGINT
# ignored, and so would every process it starts: the Ctrl-C tests (dropzone dev, erp-sim)
# need the default, as a terminal gives it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.sftp_common",
    "tests.fixtures.sshd",
    "tests.fixtures.asyncssh_server",
    "tests.fixtures.seaweedfs",
    "tests.fixtures.ftps",
    "tests.fixtures.temporal",
    "tests.fixtures.operators",
]


@pytest.fixture
def object_store(seaweedfs) -> Iterator[ObjectStore]:  # type: ignore[no-untyped-def]
    store = ObjectStore(
        seaweedfs.endpoint_url, seaweedfs.bucket, seaweedfs.access_key, seaweedfs.secret_key,
        region=seaweedfs.region,
    )
    store.ensure_bucket()
    yield store


@pytest.fixture
def sftp_pool() -> Iterator[SftpConnectionPool]:
    """An SFTP connection pool of the test's own, closed at its end."""
    with SftpConnectionPool() as pool:
        yield pool


@dataclass
class Target:
    """One dropzone behind one ERP connection, and where its files are on this machine."""

    kind: str
    org_id: uuid.UUID
    connection_id: uuid.UUID
    export_dir: Path
    ack_dir: Path
    config: dict[str, Any]


def add_connection(ledger: Ledger, org_id: uuid.UUID, config: dict[str, Any]) -> uuid.UUID:
    parsed = parse_connection_config(config)
    return ledger.add_connection(org_id, DROPZONE_JSON_V1, config_to_storable(parsed)).id


def make_target(kind: str, request: pytest.FixtureRequest, ledger: Ledger, tmp_path: Path, *, with_acks: bool = True) -> Target:
    org_id = uuid.uuid4()
    if kind == "filesystem":
        base = tmp_path / f"dropzone-{org_id.hex[:8]}"
        export_dir, ack_dir = base / "export", base / "ack"
        export_dir.mkdir(parents=True)
        ack_dir.mkdir()
        config: dict[str, Any] = {"mode": "filesystem", "export_path": str(export_dir), "ack_path": str(ack_dir)}
    else:
        server = request.getfixturevalue("openssh_server" if kind == "openssh" else "asyncssh_sftp_server")
        config = server.config()
        export_dir, ack_dir = server.local_path(config["export_path"]), server.local_path(config["ack_path"])
    config["poll_interval_seconds"] = 1
    if not with_acks:
        config.pop("ack_path")
    return Target(kind, org_id, add_connection(ledger, org_id, config), export_dir, ack_dir, config)


@pytest.fixture(params=["filesystem", "openssh", "asyncssh"])
def target(request: pytest.FixtureRequest, ledger: Ledger, tmp_path: Path) -> Target:
    return make_target(request.param, request, ledger, tmp_path)


@pytest.fixture
def fs_target(request: pytest.FixtureRequest, ledger: Ledger, tmp_path: Path) -> Target:
    return make_target("filesystem", request, ledger, tmp_path)


@pytest.fixture
def target_without_acks(request: pytest.FixtureRequest, ledger: Ledger, tmp_path: Path) -> Target:
    return make_target("filesystem", request, ledger, tmp_path, with_acks=False)
