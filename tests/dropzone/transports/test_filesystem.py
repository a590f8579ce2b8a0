"""The filesystem transport on real directories (and real kernel errors where we can get them)."""

from __future__ import annotations

import errno
import os
import pickle
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dropzone import errors
from dropzone.connection_config import FilesystemConfig, parse_connection_config
from dropzone.connectors import open_dropzone
from dropzone.delivery import Dropzone
from dropzone.transports.filesystem import FilesystemTransport
from tests.dropzone.transports._util import body_of, chunked, sha

FILENAME = "sales_order_0a1b2c3d_20250101_120000_deadbeef.json"


def make(tmp_path: Path, **overrides) -> Dropzone:
    (tmp_path / "export").mkdir(exist_ok=True)
    (tmp_path / "ack").mkdir(exist_ok=True)
    cfg = {"mode": "filesystem", "export_path": str(tmp_path / "export"), "ack_path": str(tmp_path / "ack")}
    cfg.update(overrides)
    dz = open_dropzone(parse_connection_config(cfg))
    assert isinstance(dz.transport, FilesystemTransport)
    return dz


def deliver(dz: Dropzone, data: bytes, name: str = FILENAME, token: str = "tok1", chunk: int = 65536):
    return dz.deliver(name, chunked(data, chunk), size=len(data), sha256=sha(data), token=token)


@pytest.fixture
def tiny_tmpfs() -> Iterator[Path]:
    """A 256 KiB tmpfs: real ENOSPC.  Needs root (CAP_SYS_ADMIN) to mount it."""
    d = Path(tempfile.mkdtemp(prefix="dz-tmpfs-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0777", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        d.rmdir()
        pytest.fail("cannot mount a tmpfs: run the tests as root (CAP_SYS_ADMIN), as CI does", pytrace=False)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)
        d.rmdir()


def test_deliver_new_again_conflict(tmp_path):
    data = body_of(2 * 1024 * 1024 + 5)
    with make(tmp_path) as dz:
        first = deliver(dz, data)
        final = tmp_path / "export" / FILENAME
        assert first.path == str(final) and not first.already_present
        assert (first.size_bytes, first.sha256) == (len(data), sha(data))
        assert final.read_bytes() == data
        assert stat.S_IMODE(final.stat().st_mode) == 0o640
        assert os.listdir(tmp_path / "export") == [FILENAME]

        assert deliver(dz, data, token="tok2").already_present
        before = final.stat().st_mtime_ns
        with pytest.raises(errors.DeliveryConflictError) as info:
            deliver(dz, body_of(len(data), seed=9), token="tok3")
        assert str(final) in str(info.value)
        with pytest.raises(errors.DeliveryConflictError):
            deliver(dz, data + b"x", token="tok4")
        assert final.read_bytes() == data and final.stat().st_mtime_ns == before
        assert os.listdir(tmp_path / "export") == [FILENAME]


def test_stale_tmp_of_the_same_execution_is_overwritten(tmp_path):
    dz = make(tmp_path)
    stale = tmp_path / "export" / f"{FILENAME}.tok1.tmp"
    stale.write_bytes(b"half a file from a crashed attempt")
    data = body_of(1000)
    deliver(dz, data, token="tok1")
    assert os.listdir(tmp_path / "export") == [FILENAME]


def test_file_mode_and_umask(tmp_path):
    old = os.umask(0o077)
    try:
        result = deliver(make(tmp_path, file_mode="0644"), b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(result.path).st_mode) == 0o644


def test_integrity_errors_leave_nothing(tmp_path):
    dz = make(tmp_path)
    data = body_of(300_000)
    with pytest.raises(errors.IntegrityError):
        dz.deliver(FILENAME, chunked(data, 4096), size=len(data), sha256=sha(b"x"), token="t1")
    with pytest.raises(errors.IntegrityError):
        dz.deliver(FILENAME, chunked(data, 4096), size=len(data) - 1, sha256=sha(data), token="t2")
    with pytest.raises(errors.IntegrityError):
        dz.deliver(FILENAME, chunked(data, 4096), size=len(data) + 1, sha256=sha(data), token="t3")
    assert os.listdir(tmp_path / "export") == []


def test_failing_source_removes_tmp(tmp_path):
    def source() -> Iterator[bytes]:
        yield b"abc"
        raise errors.StorageUnavailableError("gone")

    with pytest.raises(errors.StorageUnavailableError):
        make(tmp_path).deliver(FILENAME, source(), size=6, sha256=sha(b"abcdef"), token="t")
    assert os.listdir(tmp_path / "export") == []


def test_non_atomic(tmp_path):
    dz = make(tmp_path, atomic_write=False)
    data = body_of(5000)
    assert not deliver(dz, data).already_present
    assert deliver(dz, data).already_present
    with pytest.raises(errors.DeliveryConflictError):
        deliver(dz, body_of(5000, seed=4))
    with pytest.raises(errors.IntegrityError):
        dz.deliver("b.json", [data], size=len(data), sha256=sha(b""), token="t")
    assert os.listdir(tmp_path / "export") == [FILENAME]


def test_missing_directory_and_file_in_the_way(tmp_path):
    dz = make(tmp_path, export_path=str(tmp_path / "nope"))
    with pytest.raises(errors.MissingDirectoryError):
        deliver(dz, b"{}")
    (tmp_path / "a-file").write_text("x")
    dz = make(tmp_path, export_path=str(tmp_path / "a-file"))
    with pytest.raises(errors.MissingDirectoryError):  # ENOTDIR
        deliver(dz, b"{}")
    probe = dz.probe()
    assert not probe.ok and probe.detail.startswith("MISSING_DIRECTORY")


def _as_nobody(fn) -> object:
    """Run ``fn`` in a forked child with uid/gid 65534 (root ignores permission bits)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                result: object = ("ok", fn())
            except BaseException as exc:  # report whatever happened
                result = ("err", type(exc).__name__, getattr(exc, "code", None), str(exc))
            os.write(w, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def test_permission_denied_as_unprivileged_user():
    if os.geteuid() != 0:
        pytest.fail("needs root to switch to an unprivileged user: run the tests as root, as CI does", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="dz-perm-"))
    try:
        os.chmod(base, 0o755)
        (base / "export").mkdir(mode=0o755)  # owned by root: nobody may read, not write
        os.chmod(base / "export", 0o755)
        (base / "ack").mkdir(mode=0o755)
        (base / "ack" / f"ack_{FILENAME}").write_text("{}")
        cfg = FilesystemConfig(export_path=str(base / "export"), ack_path=str(base / "ack"))

        def attempt():
            return open_dropzone(cfg).deliver(FILENAME, [b"{}"], size=2, sha256=sha(b"{}"), token="t")

        assert _as_nobody(attempt)[:3] == ("err", "PermissionDeniedError", "PERMISSION_DENIED")
        moved = _as_nobody(lambda: open_dropzone(cfg).move_ack(f"ack_{FILENAME}", "processed"))
        assert moved[:3] == ("err", "PermissionDeniedError", "PERMISSION_DENIED")
        probe = _as_nobody(lambda: open_dropzone(cfg).probe())
        assert probe[0] == "ok" and not probe[1].ok and probe[1].detail.startswith("PERMISSION_DENIED")
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_disk_full_is_transient_and_leaves_no_tmp(tiny_tmpfs):
    (tiny_tmpfs / "export").mkdir()
    dz = open_dropzone(FilesystemConfig(export_path=str(tiny_tmpfs / "export")))
    data = body_of(1024 * 1024)
    with pytest.raises(errors.DropzoneUnavailableError) as info:
        deliver(dz, data)
    assert info.value.retryable and "No space left" in str(info.value)
    assert os.listdir(tiny_tmpfs / "export") == []


def test_read_only_filesystem_is_permission_denied(tiny_tmpfs):
    (tiny_tmpfs / "export").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    dz = open_dropzone(FilesystemConfig(export_path=str(tiny_tmpfs / "export")))
    with pytest.raises(errors.PermissionDeniedError):
        deliver(dz, b"{}")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, errors.DropzoneUnavailableError),
        (errno.EDQUOT, errors.DropzoneUnavailableError),
        (errno.EFBIG, errors.DropzoneUnavailableError),
        (errno.EIO, errors.DropzoneUnavailableError),
        (errno.ESTALE, errors.DropzoneUnavailableError),
        (errno.EACCES, errors.PermissionDeniedError),
        (errno.EPERM, errors.PermissionDeniedError),
        (errno.EROFS, errors.PermissionDeniedError),
        (errno.ENOENT, errors.MissingDirectoryError),
        (errno.ENOTDIR, errors.MissingDirectoryError),
    ],
)
def test_error_translation_table(tmp_path, code, expected):
    dz = make(tmp_path)
    err = dz.transport._translate(OSError(code, os.strerror(code)), "write", "/x/y")
    assert type(err) is expected
    assert "/x/y" in str(err)


def test_acks(tmp_path):
    dz = make(tmp_path)
    ack_dir = tmp_path / "ack"
    assert dz.list_acks(FILENAME) == []
    (ack_dir / f"ack_{FILENAME}.tmp").write_text("partial")
    (ack_dir / f"ack_{FILENAME}").write_text('{"status": "ACKED"}')
    (ack_dir / f"error_{FILENAME}").mkdir()  # not a file: ignored
    acks = dz.list_acks(FILENAME)
    assert [(a.name, a.kind, a.export_filename, a.size) for a in acks] == [(f"ack_{FILENAME}", "ack", FILENAME, 19)]
    assert dz.read_ack(f"ack_{FILENAME}", max_bytes=3) == b'{"st'
    moved = dz.move_ack(f"ack_{FILENAME}", "processed")
    assert moved == str(ack_dir / "processed" / f"ack_{FILENAME}")
    assert dz.move_ack(f"ack_{FILENAME}", "processed") == moved  # retried: idempotent
    (ack_dir / f"ack_{FILENAME}").write_text("again")
    assert dz.move_ack(f"ack_{FILENAME}", "processed") == moved + ".1"
    (ack_dir / f"ack_{FILENAME}").write_text("third")
    assert dz.move_ack(f"ack_{FILENAME}", "processed") == moved + ".2"
    assert Path(moved).read_text() == '{"status": "ACKED"}'
    (ack_dir / f"ack_{FILENAME}").write_text("bad")
    assert dz.move_ack(f"ack_{FILENAME}", "error") == str(ack_dir / "error" / f"ack_{FILENAME}")
    with pytest.raises(errors.AckNotYetAvailable):
        dz.read_ack(f"ack_{FILENAME}", max_bytes=10)
    with pytest.raises(errors.MissingDirectoryError):
        dz.move_ack("ack_never_there.json", "processed")
    with pytest.raises(ValueError):
        dz.move_ack(f"error_{FILENAME}", "elsewhere")  # type: ignore[arg-type]


def test_hostile_names(tmp_path):
    dz = make(tmp_path)
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    for name in ["../secret.json", "/etc/passwd", ".hidden", "a/b", "x\x00y", "x\ny", "", "..", "a..b", "é.json"]:
        with pytest.raises(errors.InvalidConfigError):
            dz.deliver(name, [b"{}"], size=2, sha256=sha(b"{}"), token="t")
        with pytest.raises(errors.InvalidConfigError):
            dz.read_ack(name, max_bytes=10)
        with pytest.raises(errors.InvalidConfigError):
            dz.move_ack(name, "processed")
        with pytest.raises(errors.InvalidConfigError):
            dz.list_acks(name)
    assert outside.read_text() == "{}"
    with pytest.raises(ValueError):
        dz.deliver(FILENAME, [b"{}"], size=2, sha256=sha(b"{}"), token="../x")


def test_probe(tmp_path):
    dz = make(tmp_path)
    result = dz.probe()
    assert result.ok and result.host_key_fingerprint is None
    assert os.listdir(tmp_path / "export") == []
    dz = make(tmp_path, ack_path=str(tmp_path / "missing-acks"))
    result = dz.probe()
    assert not result.ok and "MISSING_DIRECTORY" in result.detail


def test_no_ack_path(tmp_path):
    dz = make(tmp_path, ack_path=None)
    with pytest.raises(errors.InvalidConfigError, match="ack_path"):
        dz.list_acks(FILENAME)
