"""The filesystem transport on real directories (and real kernel errors where we can get them).

The dropzone contract itself (delivery, acks, probe, confinement) is checked for
every kind of dropzone in test_contract.py; here: what only a local directory has.
"""

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


def test_file_mode_and_umask(tmp_path):
    old = os.umask(0o077)
    try:
        result = deliver(make(tmp_path, file_mode="0644"), b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(result.path).st_mode) == 0o644


def test_a_file_where_the_export_directory_should_be_is_a_missing_directory(tmp_path):
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


