"""`dropzone dev` as a user runs it: a real process on free ports, Ctrl-C, a restart on the same data.

Every server of the embedded stack is real (Temporal dev server, embedded
PostgreSQL, SeaweedFS); what is checked is what a user would see: the lines
printed, the exit code, files and rows that survive a restart, and that no
process is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from dropzone.crypto import ConfigCipher
from dropzone.ledger import Ledger
from dropzone.object_store import ObjectStore
from starter.demo import DEMO_ORG_ID, SAMPLE_DRAFT
from starter.devstack import free_ports
from tests.helpers import eventually_sync

DROPZONE = [sys.executable, "-m", "starter.cli"]
REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 180.0  # generous: other suites load the machine
STOP_TIMEOUT = 120.0  # generous too: stopping four servers mid-startup on a loaded machine


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPZONE_")}
    env.update(extra)
    return env


class DevProcess:
    """`dropzone dev` in the background, its stdout collected line by line."""

    def __init__(self, data_dir: Path, ports: list[int], log_dir: Path) -> None:
        self.data_dir = data_dir
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.stderr_path = log_dir / f"dev-stderr-{uuid.uuid4().hex[:6]}.log"
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [*DROPZONE, "dev", "--data-dir", str(data_dir), "--temporal-port", str(ports[0]),
                 "--ui-port", str(ports[1]), "--s3-port", str(ports[2])],
                stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, text=True,
                env=clean_env(DROPZONE_ENV_FILE=str(log_dir / "absent.env")), cwd=REPO,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, needle: str, timeout: float = STARTUP_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"dropzone dev exited ({self.proc.returncode}) before {needle!r}:\n{self.output()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {needle!r} from dropzone dev in time:\n{self.output()}")
                self._changed.wait(min(remaining, 1.0))

    def field(self, label: str) -> str:
        return self.wait_for(f"{label}:", 5).split(":", 1)[1].split()[0]

    def interrupt(self) -> int:
        """Ctrl-C, as a terminal delivers it to the foreground process."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"dropzone dev did not stop within {STOP_TIMEOUT} s after Ctrl-C") from None
        finally:
            self._reader.join(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def output(self) -> str:
        return "\n".join(self.lines) + "\n--- stderr ---\n" + self.stderr_path.read_text(errors="replace")[-3000:]


@contextmanager
def dropzone_dev(data_dir: Path, ports: list[int], log_dir: Path) -> Iterator[DevProcess]:
    dev = DevProcess(data_dir, ports, log_dir)
    try:
        yield dev
    except BaseException:
        dev.kill()  # a failed assertion left it running
        raise


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path) -> Iterator[None]:
    """After the test (and its own assertions about survivors): kill whatever it left behind."""
    yield
    kill_survivors(tmp_path)


def survivors(data_dir: Path) -> list[str]:
    """Every process whose command line mentions the data directory (servers and CLI alike)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any(str(data_dir) in arg for arg in cmdline):
            found.append(f"{proc.info['pid']}: {' '.join(cmdline)}")
    return found


def wait_without_survivors(data_dir: Path, timeout: float = 10.0) -> list[str]:
    """The stack's processes still alive once they are all gone: [] (else the wait fails naming them)."""
    # A server that exited may take a moment to be reaped by init.
    eventually_sync(
        lambda: not survivors(data_dir), timeout=timeout, every=0.2,
        what=lambda: f"no process of {data_dir} left (left: {survivors(data_dir)})",
    )
    return []


def kill_survivors(data_dir: Path) -> None:
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(data_dir) in arg for arg in proc.info.get("cmdline") or []):
            try:
                proc.kill()
            except psutil.Error:
                pass


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def cli(*args: str, env_file: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DROPZONE, *args], env=clean_env(DROPZONE_ENV_FILE=str(env_file)), cwd=REPO,
        check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def test_dev_keeps_its_data_across_a_restart_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    env_file = data_dir / "dropzone.env"
    ports = free_ports(3)
    draft = json.loads(SAMPLE_DRAFT.read_text())

    # --- first run: a new data directory, one export through the ERP simulator ---
    with dropzone_dev(data_dir, ports, tmp_path) as dev:
        dev.wait_for("worker polling")
        assert dev.wait_for("data:").endswith("(new)")
        assert dev.wait_for("Temporal UI:").split()[-1] == f"http://127.0.0.1:{ports[1]}"
        connection_id = dev.field("connection")
        next_line = dev.wait_for("dropzone export ")
        assert f"--connection {connection_id}" in next_line and f"DROPZONE_ENV_FILE={env_file}" in next_line

        second = cli("dev", "--data-dir", str(data_dir), "--temporal-port", str(free_ports(1)[0]), env_file=env_file)
        assert second.returncode != 0 and "in use by another" in second.stderr and "Traceback" not in second.stderr

        exported = cli("export", str(SAMPLE_DRAFT), "--connection", connection_id, "--wait", "--json", env_file=env_file)
        assert exported.returncode == 0, exported.stderr
        first_state = json.loads(exported.stdout)
        assert first_state["status"] == "ACKED" and first_state["attempt"] == 1
        filename = first_state["filename"]
        dev.wait_for(f"ERP simulator: ACKED  {filename}")
        running = survivors(data_dir)  # the detector sees every server while they run
        for server in ("bin/temporal", "bin/weed", "bin/postgres"):
            assert any(server in line for line in running), running
        assert dev.interrupt() == 0, dev.output()
    assert "stopped" in dev.lines[-1]
    assert wait_without_survivors(data_dir) == []

    # --- second run: the same data directory ---
    with dropzone_dev(data_dir, ports, tmp_path) as dev:
        dev.wait_for("worker polling")
        assert dev.wait_for("data:").endswith("(reused)")
        assert dev.field("connection") == connection_id  # PostgreSQL kept the connection

        # Temporal kept the finished run: exporting the same draft again lands on it
        # (same attempt, same file) instead of starting a second export.
        again = cli("export", str(SAMPLE_DRAFT), "--connection", connection_id, "--wait", "--json", env_file=env_file)
        assert again.returncode == 0, again.stderr
        state = json.loads(again.stdout)
        assert (state["status"], state["attempt"], state["filename"]) == ("ACKED", 1, filename)

        env = read_env_file(env_file)
        ledger = Ledger.connect(env["DROPZONE_DATABASE_URL"], ConfigCipher([env["DROPZONE_CONFIG_KEYS"]]), pool_size=1)
        try:
            rows = ledger.list_exports(draft_order_id=uuid.UUID(draft["draft_order_id"]))
        finally:
            ledger.dispose()
        assert [(r.attempt, r.status, r.filename) for r in rows] == [(1, "ACKED", filename)]

        store = ObjectStore(env["DROPZONE_S3_ENDPOINT_URL"], env["DROPZONE_S3_BUCKET"],
                            env["DROPZONE_S3_ACCESS_KEY"], env["DROPZONE_S3_SECRET_KEY"])
        head = store.head(f"exports/{DEMO_ORG_ID}/{filename}")  # SeaweedFS kept the stored copy
        assert head is not None and head.sha256 == rows[0].sha256
        assert (data_dir / "dropzone" / "acks" / "processed" / f"ack_{filename}").is_file()

        assert dev.interrupt() == 0, dev.output()
    assert wait_without_survivors(data_dir) == []


def test_a_port_in_use_is_named_without_a_traceback(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    ports = free_ports(3)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[0]))
        holder.listen()
        result = subprocess.run(
            [*DROPZONE, "dev", "--data-dir", str(data_dir), "--temporal-port", str(ports[0]),
             "--ui-port", str(ports[1]), "--s3-port", str(ports[2])],
            env=clean_env(DROPZONE_ENV_FILE=str(tmp_path / "absent.env")), cwd=REPO,
            check=False, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
    assert result.returncode != 0
    assert f"port {ports[0]}" in result.stderr and "already in use" in result.stderr
    assert "--temporal-port" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert wait_without_survivors(data_dir) == []
    assert not (data_dir / "postgres").exists()  # nothing was started


@pytest.mark.parametrize("flag", ["--ui-port", "--s3-port"])
def test_each_published_port_is_checked(tmp_path: Path, flag: str) -> None:
    ports = dict(zip(["--temporal-port", "--ui-port", "--s3-port"], free_ports(3), strict=True))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[flag]))
        holder.listen()
        args = [arg for pair in ports.items() for arg in (pair[0], str(pair[1]))]
        result = subprocess.run(
            [*DROPZONE, "demo", "--exit", "--data-dir", str(tmp_path / "stack"), *args],
            env=clean_env(DROPZONE_ENV_FILE=str(tmp_path / "absent.env")), cwd=REPO,
            check=False, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
    assert result.returncode != 0 and "already in use" in result.stderr and flag in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_ctrl_c_during_startup_leaves_no_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    with dropzone_dev(data_dir, free_ports(3), tmp_path) as dev:
        # Interrupt as soon as `pg_ctl start` has begun (it creates the server log): the
        # postmaster it forks outlives pg_ctl, and the library has no handle on it yet.
        started = data_dir / "postgres" / "log"
        eventually_sync(
            lambda: started.exists() or dev.proc.poll() is not None, timeout=STARTUP_TIMEOUT, every=0.01,
            what="pg_ctl start beginning",
        )
        assert started.exists(), dev.output()
        code = dev.interrupt()
        assert code in (0, 130), dev.output()
        assert "Traceback" not in dev.output()
    assert wait_without_survivors(data_dir) == []
