"""SftpDropzone against real servers: OpenSSH sshd and asyncssh (every test runs on both)."""

from __future__ import annotations

import os
import stat
import time
import uuid
from collections.abc import Iterator

import pytest

from dropzone import errors
from dropzone.connection_config import parse_connection_config
from dropzone.transports import open_dropzone
from dropzone.transports.base import Dropzone
from dropzone.transports.sftp import (
    SftpConnectionPool,
    SftpDropzone,
    fetch_host_key,
    host_key_fingerprint,
)
from tests.dropzone.transports._util import body_of, chunked, sha
from tests.fixtures.servers import READONLY_DIR, free_port

FILENAME = "sales_order_0a1b2c3d_20250101_120000_deadbeef.json"


def connect(server, **overrides) -> SftpDropzone:
    return SftpDropzone.connect(parse_connection_config(server.config(**overrides)))


def deliver(dz: Dropzone, data: bytes, name: str = FILENAME, token: str = "tok1", chunk: int = 65536):
    return dz.deliver(name, chunked(data, chunk), size=len(data), sha256=sha(data), token=token)


def listing(server, remote_dir: str) -> list[str]:
    return sorted(os.listdir(server.local_path(remote_dir)))


# ----- authentication and host keys -----


def test_password_auth_and_probe(sftp_server):
    with connect(sftp_server) as dz:
        assert isinstance(dz, Dropzone)
        result = dz.probe()
        assert result.ok, result.detail
        assert result.host_key_fingerprint == sftp_server.host_key_fingerprint
        assert dz.host_key_fingerprint == sftp_server.host_key_fingerprint
        assert listing(sftp_server, dz.export_path) == []  # probe file removed


@pytest.mark.parametrize("key", ["ed25519", "rsa"])
def test_key_auth(sftp_server, key):
    text = sftp_server.keys.ed25519 if key == "ed25519" else sftp_server.keys.rsa
    with connect(sftp_server, password=None, ssh_key=text) as dz:
        assert deliver(dz, b"{}").already_present is False


def test_encrypted_key_needs_passphrase(sftp_server):
    keys = sftp_server.keys
    with connect(sftp_server, password=None, ssh_key=keys.ed25519_encrypted, ssh_key_passphrase=keys.passphrase) as dz:
        assert dz.probe().ok
    with pytest.raises(errors.InvalidConfigError, match="passphrase"):
        connect(sftp_server, password=None, ssh_key=keys.ed25519_encrypted)
    with pytest.raises(errors.InvalidConfigError) as info:
        connect(sftp_server, password=None, ssh_key=keys.ed25519_encrypted, ssh_key_passphrase="wrong-secret-pp")
    assert "wrong-secret-pp" not in str(info.value)


def test_wrong_password_fails_fast_without_leaking_it(sftp_server):
    started = time.monotonic()
    with pytest.raises(errors.AuthenticationError) as info:
        connect(sftp_server, password="wrong-secret-pw")
    elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed
    assert info.value.code == "AUTH_FAILED"
    assert str(info.value) == f"sftp://{sftp_server.username}@{sftp_server.host}:{sftp_server.port}: authentication failed"
    assert "wrong-secret-pw" not in repr(info.value) + repr(info.value.__cause__)
    assert info.value.retryable is False


def test_auth_attempts_are_observable(sftp_server):
    # Control for the "no auth attempted" assertions below: an attempt IS counted.
    user = "control" + uuid.uuid4().hex[:8]
    with pytest.raises(errors.AuthenticationError):
        connect(sftp_server, username=user)
    assert sftp_server.auth_attempts(user) >= 1


def test_key_not_authorized(sftp_server):
    with pytest.raises(errors.AuthenticationError):
        connect(sftp_server, password=None, ssh_key=sftp_server.keys.unauthorized_ed25519)


def test_unknown_host_key_is_refused_before_auth(sftp_server):
    user = "unknownkey" + uuid.uuid4().hex[:8]
    with pytest.raises(errors.HostKeyError) as info:
        connect(sftp_server, host_key=None, username=user)
    assert info.value.code == "HOST_KEY_UNKNOWN"
    assert sftp_server.host_key_fingerprint in str(info.value)  # what the operator must verify
    assert sftp_server.auth_attempts(user) == 0


@pytest.mark.parametrize("pin", ["fingerprint", "key_line"])
def test_wrong_pinned_host_key_is_a_mismatch_before_auth(sftp_server, pin):
    other = sftp_server.keys.ed25519_pub  # a valid ed25519 key, but not the server's
    import base64
    import hashlib

    blob = base64.b64decode(other.split()[1])
    wrong = (
        "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        if pin == "fingerprint"
        else " ".join(other.split()[:2])
    )
    user = "mismatch" + uuid.uuid4().hex[:8]
    with pytest.raises(errors.HostKeyError) as info:
        connect(sftp_server, host_key=wrong, username=user)
    assert info.value.code == "HOST_KEY_MISMATCH"
    assert sftp_server.host_key_fingerprint in str(info.value)
    assert sftp_server.auth_attempts(user) == 0


def test_pin_rsa_key_line_or_fingerprint(sftp_server):
    # The server also has an RSA key; pinning it (as a line or as a bare fingerprint) works.
    with connect(sftp_server, host_key=sftp_server.host_key_lines["ssh-rsa"]) as dz:
        assert dz.host_key_fingerprint == sftp_server.host_key_fingerprints["ssh-rsa"]
    with connect(sftp_server, host_key=sftp_server.host_key_fingerprints["ssh-rsa"]) as dz:
        assert dz.host_key_fingerprint == sftp_server.host_key_fingerprints["ssh-rsa"]


def test_fetch_host_key(sftp_server):
    key_type, fingerprint, line = fetch_host_key(sftp_server.host, sftp_server.port, timeout=5)
    assert key_type == "ssh-ed25519"
    assert fingerprint == sftp_server.host_key_fingerprint
    assert line == sftp_server.host_key_line
    # The printed line is itself a valid pin.
    with connect(sftp_server, host_key=line) as dz:
        assert dz.host_key_fingerprint == fingerprint


def test_host_key_fingerprint_matches_ssh_keygen(ssh_client_keys):
    import subprocess

    from dropzone.transports.sftp import load_private_key, public_key_line

    for path, text in [(ssh_client_keys.ed25519_path, ssh_client_keys.ed25519), (ssh_client_keys.rsa_path, ssh_client_keys.rsa)]:
        pkey = load_private_key(text)
        out = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], capture_output=True, text=True, check=True).stdout
        assert host_key_fingerprint(pkey) == out.split()[1]
        assert public_key_line(pkey) == " ".join(path.with_suffix(".pub").read_text().split()[:2])


# ----- delivery -----


def test_deliver_new_again_and_conflict(sftp_server):
    data = body_of(3 * 1024 * 1024 + 17)
    with connect(sftp_server) as dz:
        first = deliver(dz, data, chunk=1 << 20)
        assert first.already_present is False
        assert first.path == f"{dz.export_path}/{FILENAME}"
        assert first.size_bytes == len(data) and first.sha256 == sha(data)
        local = sftp_server.local_path(first.path)
        assert local.read_bytes() == data
        assert stat.S_IMODE(local.stat().st_mode) == 0o640
        assert listing(sftp_server, dz.export_path) == [FILENAME]  # no .tmp left

        again = deliver(dz, data, token="tok2")
        assert again.already_present is True
        assert listing(sftp_server, dz.export_path) == [FILENAME]

        other = body_of(len(data), seed=2)
        with pytest.raises(errors.DeliveryConflictError) as info:
            deliver(dz, other, token="tok3")
        assert first.path in str(info.value)
        assert local.read_bytes() == data  # untouched
        assert listing(sftp_server, dz.export_path) == [FILENAME]

        with pytest.raises(errors.DeliveryConflictError):
            deliver(dz, data[:-1], token="tok4")  # different size


def test_file_mode_is_applied(sftp_server):
    with connect(sftp_server, file_mode="0600") as dz:
        result = deliver(dz, b'{"a": 1}')
    assert stat.S_IMODE(sftp_server.local_path(result.path).stat().st_mode) == 0o600


def test_small_chunks_and_empty_file(sftp_server):
    data = body_of(100_003)
    with connect(sftp_server) as dz:
        deliver(dz, data, name="small.json", chunk=7)
        deliver(dz, b"", name="empty.json")
        assert sftp_server.local_path(f"{dz.export_path}/small.json").read_bytes() == data
        assert sftp_server.local_path(f"{dz.export_path}/empty.json").read_bytes() == b""
        assert deliver(dz, data, name="small.json", token="t9").already_present


def test_integrity_errors_leave_nothing(sftp_server):
    data = body_of(500_000)
    with connect(sftp_server) as dz:
        with pytest.raises(errors.IntegrityError):
            dz.deliver(FILENAME, chunked(data, 65536), size=len(data), sha256=sha(b"other"), token="t1")
        with pytest.raises(errors.IntegrityError):
            dz.deliver(FILENAME, chunked(data, 65536), size=len(data) - 10, sha256=sha(data), token="t2")
        with pytest.raises(errors.IntegrityError):
            dz.deliver(FILENAME, chunked(data, 65536), size=len(data) + 10, sha256=sha(data), token="t3")
        assert listing(sftp_server, dz.export_path) == []
        # The session is still usable afterwards.
        assert deliver(dz, data).already_present is False


def test_failing_source_removes_tmp(sftp_server):
    def source() -> Iterator[bytes]:
        yield b"x" * 300_000
        raise errors.StorageUnavailableError("storage went away")

    with connect(sftp_server) as dz:
        with pytest.raises(errors.StorageUnavailableError):
            dz.deliver(FILENAME, source(), size=600_000, sha256=sha(b""), token="t1")
        assert listing(sftp_server, dz.export_path) == []


def test_retry_removes_tmps_of_earlier_attempts_only(sftp_server):
    # What a worker killed mid-upload leaves: attempt 1's partial .tmp. Attempt 3
    # (still writing, in a race) and other exports' tmps must survive attempt 2.
    data = body_of(70_000)
    other = "sales_order_99999999_20250101_120000_deadbeef.json"
    leftovers = {
        f"{FILENAME}.r1x0a0a.tmp": False,
        f"{FILENAME}.r3x0b0b.tmp": True,
        f"{other}.r1x0c0c.tmp": True,
        f"{FILENAME}.tok1.tmp": True,
    }
    with connect(sftp_server) as dz:
        export_dir = sftp_server.local_path(dz.export_path)
        for name in leftovers:
            with open(os.path.join(export_dir, name), "wb") as f:
                f.write(b'{"partial": ')
        result = dz.deliver(FILENAME, chunked(data, 8192), size=len(data), sha256=sha(data), token="r2x1d1d", attempt=2)
        assert not result.already_present
        expected = sorted([FILENAME, *(name for name, kept in leftovers.items() if kept)])
        assert listing(sftp_server, dz.export_path) == expected
        # A first attempt never lists the directory, so it leaves every tmp alone.
        os.remove(os.path.join(export_dir, FILENAME))
        dz.deliver(FILENAME, [data], size=len(data), sha256=sha(data), token="r1x2e2e", attempt=1)
        assert listing(sftp_server, dz.export_path) == expected
        # Already delivered (the crash came after the rename): the retry still sweeps.
        with open(os.path.join(export_dir, f"{FILENAME}.r2x3f3f.tmp"), "wb") as f:
            f.write(b"{")
        assert dz.deliver(FILENAME, [data], size=len(data), sha256=sha(data), token="r4x4a4a", attempt=4).already_present
        assert listing(sftp_server, dz.export_path) == sorted([FILENAME, f"{other}.r1x0c0c.tmp", f"{FILENAME}.tok1.tmp"])


def test_non_atomic_write(sftp_server):
    data = body_of(200_000)
    with connect(sftp_server, atomic_write=False) as dz:
        assert deliver(dz, data).already_present is False
        assert deliver(dz, data).already_present is True
        with pytest.raises(errors.DeliveryConflictError):
            deliver(dz, body_of(200_000, seed=3))
        with pytest.raises(errors.IntegrityError):
            dz.deliver("other.json", chunked(data, 4096), size=len(data), sha256=sha(b"no"), token="t")
        assert listing(sftp_server, dz.export_path) == [FILENAME]


def test_missing_directory(sftp_server):
    _, remote = sftp_server.make_dirs()
    with connect(sftp_server, export_path=f"{remote}/does-not-exist") as dz:
        with pytest.raises(errors.MissingDirectoryError):
            deliver(dz, b"{}")
        probe = dz.probe()
        assert not probe.ok and probe.detail.startswith("MISSING_DIRECTORY")


def test_permission_denied(sftp_server):
    if sftp_server.kind == "openssh":
        local, remote = sftp_server.make_dirs()
        (local / "locked").mkdir()  # owned by root, 0755: the SFTP user cannot write
        os.chmod(local / "locked", 0o755)
        export = f"{remote}/locked"
    else:
        (sftp_server.root / READONLY_DIR).mkdir(exist_ok=True)
        export = f"/{READONLY_DIR}"
    with connect(sftp_server, export_path=export) as dz:
        with pytest.raises(errors.PermissionDeniedError):
            deliver(dz, b"{}")
        probe = dz.probe()
        assert not probe.ok and probe.detail.startswith("PERMISSION_DENIED")


def test_hostile_names_are_refused(sftp_server):
    with connect(sftp_server) as dz:
        for name in ["../escape.json", ".hidden", "a/b.json", "x\n.json", "", "..", "a..b"]:
            with pytest.raises(errors.InvalidConfigError):
                dz.deliver(name, [b"{}"], size=2, sha256=sha(b"{}"), token="t")
            with pytest.raises(errors.InvalidConfigError):
                dz.read_ack(name, max_bytes=10)
            with pytest.raises(errors.InvalidConfigError):
                dz.move_ack(name, "processed")
            with pytest.raises(errors.InvalidConfigError):
                dz.list_acks(name)


# ----- acks -----


def test_acks_list_read_move(sftp_server):
    with connect(sftp_server) as dz:
        ack_dir = sftp_server.local_path(dz.ack_path)
        assert dz.list_acks(FILENAME) == []
        (ack_dir / f"ack_{FILENAME}.tmp").write_bytes(b"partial")  # ERP still writing
        (ack_dir / f"ack_{FILENAME}").write_bytes(b'{"status": "ACKED"}')
        (ack_dir / f"error_{FILENAME}").write_bytes(b'{"status": "FAILED"}')
        (ack_dir / "ack_other.json").write_bytes(b"{}")
        acks = dz.list_acks(FILENAME)
        assert [(a.name, a.kind, a.export_filename, a.size) for a in acks] == [
            (f"ack_{FILENAME}", "ack", FILENAME, 19),
            (f"error_{FILENAME}", "error", FILENAME, 20),
        ]
        assert acks[0].mtime > 0
        assert dz.read_ack(f"ack_{FILENAME}", max_bytes=1000) == b'{"status": "ACKED"}'
        assert dz.read_ack(f"ack_{FILENAME}", max_bytes=5) == b'{"stat'  # max_bytes + 1

        moved = dz.move_ack(f"ack_{FILENAME}", "processed")
        assert moved == f"{dz.ack_path}/processed/ack_{FILENAME}"
        assert (ack_dir / "processed" / f"ack_{FILENAME}").read_bytes() == b'{"status": "ACKED"}'
        # Retried move after the first one succeeded: same answer.
        assert dz.move_ack(f"ack_{FILENAME}", "processed") == moved

        # The target exists: a suffix, never an overwrite.
        (ack_dir / f"ack_{FILENAME}").write_bytes(b"second")
        moved2 = dz.move_ack(f"ack_{FILENAME}", "processed")
        assert moved2 == f"{moved}.1"
        assert (ack_dir / "processed" / f"ack_{FILENAME}").read_bytes() == b'{"status": "ACKED"}'

        assert dz.move_ack(f"error_{FILENAME}", "error") == f"{dz.ack_path}/error/error_{FILENAME}"
        assert dz.list_acks(FILENAME) == []
        with pytest.raises(errors.AckNotYetAvailable):
            dz.read_ack(f"ack_{FILENAME}", max_bytes=10)


def test_probe_reports_missing_ack_path(sftp_server):
    _, remote = sftp_server.make_dirs()
    with connect(sftp_server, ack_path=f"{remote}/no-acks-here") as dz:
        result = dz.probe()
    assert not result.ok and "MISSING_DIRECTORY" in result.detail


def test_ack_methods_need_ack_path(sftp_server):
    cfg = sftp_server.config()
    cfg.pop("ack_path")
    with SftpDropzone.connect(parse_connection_config(cfg)) as dz, pytest.raises(errors.InvalidConfigError, match="ack_path"):
        dz.list_acks(FILENAME)


# ----- pool -----


def test_pool_reuses_and_replaces_dead_connections(sftp_server, sftp_pool: SftpConnectionPool):
    cfg = parse_connection_config(sftp_server.config())
    with sftp_pool.acquire(cfg) as dz:
        deliver(dz, b"{}", name="one.json")
        first = dz._session
    with sftp_pool.acquire(cfg) as dz:
        deliver(dz, b"{}", name="two.json")
        assert dz._session is first
    assert (sftp_pool.created, sftp_pool.reused) == (1, 1)

    first.transport.close()  # the connection dies while idle
    with sftp_pool.acquire(cfg) as dz:
        assert dz._session is not first
        deliver(dz, b"{}", name="three.json")
    assert (sftp_pool.created, sftp_pool.reused, sftp_pool.discarded) == (2, 1, 1)

    # A different endpoint key (other credentials) never gets that connection.
    other = parse_connection_config(sftp_server.config(password=None, ssh_key=sftp_server.keys.ed25519))
    with sftp_pool.acquire(other) as dz:
        assert dz.probe().ok
    assert sftp_pool.created == 3
    # open_dropzone(pool=...) lends from the same pool.
    with open_dropzone(cfg, pool=sftp_pool) as dz:
        assert dz.probe().ok
    assert sftp_pool.reused == 2


def test_pool_survives_a_server_restart(sftp_server, sftp_pool):
    cfg = parse_connection_config(sftp_server.config())
    with sftp_pool.acquire(cfg) as dz:
        deliver(dz, b"{}", name="before.json")
    sftp_server.stop()
    sftp_server.start()
    with sftp_pool.acquire(cfg) as dz:
        deliver(dz, b"{}", name="after.json")
    assert (sftp_pool.created, sftp_pool.reused, sftp_pool.discarded) == (2, 0, 1)


def test_pool_concurrent_threads_get_their_own_connections(sftp_server, sftp_pool):
    from concurrent.futures import ThreadPoolExecutor

    cfg = parse_connection_config(sftp_server.config())
    data = body_of(2 * 1024 * 1024)

    def work(i: int) -> bool:
        with sftp_pool.acquire(cfg) as dz:
            return deliver(dz, data, name=f"file{i}.json", chunk=1 << 20).already_present

    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(work, range(12))) == [False] * 12
    assert 1 <= sftp_pool.created <= 4 and sftp_pool.created + sftp_pool.reused == 12
    local = sftp_server.local_path(cfg.export_path)
    assert all((local / f"file{i}.json").read_bytes() == data for i in range(12))


def test_pool_idle_expiry_and_bounds(sftp_server):
    cfg = parse_connection_config(sftp_server.config())
    with SftpConnectionPool(max_idle=1, max_idle_seconds=0.2) as pool:
        a, b = pool.open(cfg), pool.open(cfg)
        a.close()
        b.close()
        assert pool.idle_count() == 1  # bounded
        time.sleep(0.3)
        with pool.acquire(cfg):
            pass
        assert pool.created == 3  # the idle one had expired


# ----- server down -----


def test_server_down_is_transient_within_connect_timeout(sftp_server):
    sftp_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(errors.DropzoneUnavailableError) as info:
            connect(sftp_server, connect_timeout_seconds=2)
        assert time.monotonic() - started < 2.5
        assert info.value.retryable
    finally:
        sftp_server.start()


def test_unroutable_connect_times_out():
    # Nothing listens there; a blackholed address would hang without the connect timeout.
    cfg = parse_connection_config(
        {
            "mode": "sftp",
            "host": "127.0.0.1",
            "port": free_port(),
            "username": "u",
            "password": "p",
            "host_key": "SHA256:" + "A" * 43,
            "export_path": "/x",
            "connect_timeout_seconds": 1,
        }
    )
    with pytest.raises(errors.DropzoneUnavailableError, match="connection refused"):
        SftpDropzone.connect(cfg)


def test_silent_server_times_out_within_connect_timeout():
    # Accepts TCP but never sends an SSH banner: only the banner/handshake timeouts end it.
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        cfg = parse_connection_config(
            {
                "mode": "sftp",
                "host": "127.0.0.1",
                "port": listener.getsockname()[1],
                "username": "u",
                "password": "p",
                "host_key": "SHA256:" + "A" * 43,
                "export_path": "/x",
                "connect_timeout_seconds": 1,
            }
        )
        started = time.monotonic()
        with pytest.raises(errors.DropzoneUnavailableError):
            SftpDropzone.connect(cfg)
        assert time.monotonic() - started < 3


def test_usernames_with_at_sign_are_accepted_by_config(sftp_server):
    cfg = parse_connection_config(sftp_server.config(username="orders@erp.example.com"))
    with pytest.raises(errors.AuthenticationError, match="sftp://orders@erp.example.com@"):
        SftpDropzone.connect(cfg)


def test_server_stopped_mid_delivery_then_retry_succeeds(sftp_server, sftp_pool):
    data = body_of(8 * 1024 * 1024)
    cfg = parse_connection_config(sftp_server.config(operation_timeout_seconds=5))

    def source() -> Iterator[bytes]:
        for i, chunk in enumerate(chunked(data, 1 << 20)):
            if i == 3:
                sftp_server.stop()
            yield chunk

    try:
        started = time.monotonic()
        with pytest.raises(errors.DropzoneUnavailableError), sftp_pool.acquire(cfg) as dz:
            dz.deliver(FILENAME, source(), size=len(data), sha256=sha(data), token="tok1")
        assert time.monotonic() - started < 8
        assert sftp_pool.idle_count() == 0  # the broken connection was not pooled
    finally:
        sftp_server.start()
    # The retry (same token, as Temporal retries the same execution) completes.
    with sftp_pool.acquire(cfg) as dz:
        result = dz.deliver(FILENAME, chunked(data, 1 << 20), size=len(data), sha256=sha(data), token="tok1")
    assert result.already_present is False
    assert sftp_server.local_path(result.path).read_bytes() == data
    assert listing(sftp_server, cfg.export_path) == [FILENAME]


def test_disk_full_is_transient_and_write_errors_are_not_lost(sftp_server):
    # A pipelined write that fails (ENOSPC) must surface, not vanish in the pipeline.
    import subprocess

    local, remote = sftp_server.make_dirs()
    mnt = local / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0777", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.fail("cannot mount a tmpfs: run the tests as root (CAP_SYS_ADMIN), as CI does", pytrace=False)
    try:
        data = body_of(2 * 1024 * 1024)
        with connect(sftp_server, export_path=f"{remote}/full") as dz:
            with pytest.raises(errors.DropzoneUnavailableError) as info:
                deliver(dz, data, chunk=1 << 20)
            assert info.value.retryable
            assert os.listdir(mnt) == []  # tmp removed
            assert deliver(dz, b"{}", name="small.json").already_present is False  # session still fine
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
