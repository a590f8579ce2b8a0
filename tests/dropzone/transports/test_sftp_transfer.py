"""The delivery algorithm over SftpTransport, against OpenSSH sshd and asyncssh (every test runs on both)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest

from dropzone import errors
from dropzone.connection_config import parse_connection_config
from dropzone.delivery import Dropzone
from dropzone.transports.sftp import SftpTransport
from tests.dropzone.transports._sftp import FILENAME, connect, deliver, listing
from tests.dropzone.transports._util import body_of, chunked, sha
from tests.fixtures.servers import READONLY_DIR

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
    with Dropzone(SftpTransport.connect(parse_connection_config(cfg))) as dz, pytest.raises(errors.InvalidConfigError, match="ack_path"):
        dz.list_acks(FILENAME)
