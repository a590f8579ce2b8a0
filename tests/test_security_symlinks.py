"""Links the ERP plants in its dropzone are never followed (filesystem and OpenSSH).

The ERP can write into export_path and ack_path, so it can plant symbolic links
there: ``error_<file>`` pointing at a file the worker may read, ``processed`` or
``error`` pointing at another directory the worker may write. Each test plants
one and checks real outcomes: the target was never opened (inotify sees every
open, by this process or by the sshd serving SFTP), nothing appeared outside
the dropzone, no export changed, and the link is in ``erp_ack_rejection`` with
a reason. Real ledger (PostgreSQL), real directory, real OpenSSH sshd. Over FTPS the
server resolves links itself, so what is checked there is what FTPS guarantees: nothing
outside the FTP user's root is read or written through one (real pyftpdlib server).
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from activities.acks import AckActivities
from dropzone import naming
from dropzone.connection_config import parse_connection_config
from dropzone.connectors import default_registry
from dropzone.errors import AckNotYetAvailable, DropzoneError, UnsafePathError
from dropzone.ledger import ExportRecord, Ledger
from dropzone.connectors import open_dropzone
from tests.conftest import Target, make_target
from tests.test_corpus_acks import open_export, poll
from tests.fixtures.sftp_common import SFTP_USER
from tests.helpers import ack_body, error_body, sha256_of

LONG_AGO = 3600.0  # settled, and past any sweep grace
SENTINEL = "SENTINEL-OUTSIDE-7f3a"
IN_ACCESS, IN_OPEN = 0x1, 0x20


class OpenWatch:
    """Counts opens and reads of one file by any process (inotify on its inode)."""

    def __init__(self, path: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        assert self._libc.inotify_add_watch(self.fd, os.fsencode(path), IN_OPEN | IN_ACCESS) >= 0
        # The watch itself must be able to fail the test: one read of ours is seen.
        path.read_bytes()
        assert self.events() > 0, "inotify did not report an open"

    def events(self) -> int:
        count = 0
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return count
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                offset += 16 + length
                count += 1

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture(params=["filesystem", "openssh"])
def target(request: pytest.FixtureRequest, ledger: Ledger, tmp_path: Path) -> Target:
    return make_target(request.param, request, ledger, tmp_path)


@pytest.fixture
def outside(request: pytest.FixtureRequest, target: Target, tmp_path: Path) -> Path:
    """An empty directory outside the dropzone that the worker (and the SFTP user) may write."""
    if target.kind == "filesystem":
        path = tmp_path / f"outside-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path
    local, _ = request.getfixturevalue("openssh_server").make_dirs()
    path = local / "export"  # owned by the SFTP user, empty
    assert list(path.iterdir()) == []
    return path


@pytest.fixture
def secret(outside: Path, target: Target) -> Iterator[tuple[Path, bytes, OpenWatch]]:
    """A file outside the dropzone that the worker and the SFTP user may read and write:
    a valid error ack with a sentinel, so following a link to it would record the sentinel."""
    body = json.dumps({**error_body("STOLEN"), "message": SENTINEL}).encode()
    path = outside.parent / f"secret-{uuid.uuid4().hex[:8]}.json"
    path.write_bytes(body)
    path.chmod(0o644)
    if target.kind == "openssh":
        user = pwd.getpwnam(SFTP_USER)
        os.chown(path, user.pw_uid, user.pw_gid)
    watch = OpenWatch(path)
    yield path, body, watch
    watch.close()
    path.unlink()


@pytest.fixture
def acks(ledger: Ledger) -> Iterator[AckActivities]:
    registry = default_registry()
    yield AckActivities(ledger, registry)
    registry.close()


def age(path: Path, seconds: float = LONG_AGO) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)


def put_ack(target: Target, name: str, body: bytes) -> Path:
    path = target.ack_dir / name
    path.write_bytes(body)
    path.chmod(0o644)
    age(path)
    return path


def assert_nothing_leaked(ledger: Ledger, target: Target, outside: Path, record: ExportRecord) -> None:
    assert list(outside.iterdir()) == [], "something was written outside the dropzone"
    assert ledger.get_export(record.id) == record, "the export changed"
    for row in ledger.list_ack_rejections(connection_id=target.connection_id):
        assert SENTINEL not in row.reason and "STOLEN" not in row.reason


# --- error_<file> -> a file outside ---------------------------------------------------


def test_an_ack_that_is_a_link_is_refused_unread(acks, ledger, target, outside, secret):
    secret_path, secret_body, watch = secret
    record = open_export(ledger, target)
    name = f"error_{record.filename}"
    link = target.ack_dir / name
    link.symlink_to(secret_path)
    age(link)

    assert poll(acks, record) == "ACK_PENDING"

    assert watch.events() == 0, "the link's target was opened"
    assert secret_path.read_bytes() == secret_body
    assert not os.path.lexists(link)
    moved = target.ack_dir / "error" / name
    assert moved.is_symlink() and os.readlink(moved) == str(secret_path)  # moved as the link
    (rejection,) = ledger.list_ack_rejections(connection_id=target.connection_id)
    assert rejection.ack_file == name and rejection.export_id == record.id
    assert "symbolic link" in rejection.reason and name in rejection.reason
    assert rejection.moved_to == f"{target.config['ack_path']}/error/{name}"
    assert_nothing_leaked(ledger, target, outside, record)


def test_the_sweep_refuses_a_link_for_an_unknown_export_unread(acks, ledger, target, outside, secret):
    secret_path, _, watch = secret
    polled = open_export(ledger, target)
    name = "ack_sales_order_deadbeef_20250101_000000_cafebabe.json"
    link = target.ack_dir / name
    link.symlink_to(secret_path)
    age(link)

    assert poll(acks, polled) == "ACK_PENDING"  # the sweep runs inside this poll

    assert watch.events() == 0
    assert (target.ack_dir / "error" / name).is_symlink()
    (rejection,) = ledger.list_ack_rejections(connection_id=target.connection_id)
    assert rejection.ack_file == name and "symbolic link" in rejection.reason
    assert_nothing_leaked(ledger, target, outside, polled)


# --- processed/ or error/ -> a directory outside ---------------------------------------------


@pytest.mark.parametrize(
    ("folder", "kind", "body"),
    [
        ("processed", "ack", json.dumps(ack_body("SO-LINKED")).encode()),  # would be taken, then moved there
        ("error", "ack", b"not json at all"),  # would be rejected, then moved there
    ],
    ids=["processed", "error"],
)
def test_a_folder_that_is_a_link_stops_ack_handling(acks, ledger, target, outside, folder, kind, body):
    record = open_export(ledger, target)
    link = target.ack_dir / folder
    link.symlink_to(outside, target_is_directory=True)
    name = f"{kind}_{record.filename}"
    ack = put_ack(target, name, body)

    assert poll(acks, record) == "UNSAFE_PATH"
    assert poll(acks, record) == "UNSAFE_PATH"  # every poll, until an operator removes the link

    assert ack.read_bytes() == body  # left where it was, not read into the ledger
    assert link.is_symlink()
    assert_nothing_leaked(ledger, target, outside, record)
    (rejection,) = ledger.list_ack_rejections(connection_id=target.connection_id)  # recorded once
    link_path = f"{target.config['ack_path']}/{folder}"
    assert rejection.ack_file == folder and rejection.moved_to == link_path
    assert "symbolic link" in rejection.reason and link_path in rejection.reason
    assert rejection.export_id == record.id


def test_the_sweep_stops_at_a_folder_that_is_a_link(acks, ledger, target, outside):
    polled = open_export(ledger, target)
    link = target.ack_dir / "error"
    link.symlink_to(outside, target_is_directory=True)
    stray = put_ack(target, "ack_sales_order_deadbeef_20250101_000000_cafebabe.json", b"{}")

    assert poll(acks, polled) == "ACK_PENDING"  # the sweep is housekeeping: this poll goes on

    assert stray.exists() and list(outside.iterdir()) == []
    (rejection,) = ledger.list_ack_rejections(connection_id=target.connection_id)
    assert rejection.ack_file == "error" and "symbolic link" in rejection.reason
    assert_nothing_leaked(ledger, target, outside, polled)


# --- export_path -------------------------------------------------------------------------------


def test_delivery_never_writes_through_a_planted_link(ledger, target, secret):
    secret_path, secret_body, watch = secret
    body = b'{"order": 1}\n'
    filename = "sales_order_deadbeef_20250101_000000_cafebabe.json"
    token = naming.execution_token(2, "abc")
    # The ERP saw attempt 1's .tmp name and guesses attempt 2's.
    (target.export_dir / naming.tmp_name(filename, token)).symlink_to(secret_path)
    with open_dropzone(parse_connection_config(target.config)) as dz:
        with pytest.raises(UnsafePathError, match="symbolic link"):
            dz.deliver(filename, [body], size=len(body), sha256=sha256_of(body), token=token)
    assert watch.events() == 0, "the link's target was opened"
    assert secret_path.read_bytes() == secret_body
    watch.events()  # our own read
    assert not os.path.lexists(target.export_dir / filename)
    assert not os.path.lexists(target.export_dir / naming.tmp_name(filename, token))  # the link itself removed

    # A link at the final name is neither read (to compare) nor replaced.
    (target.export_dir / filename).symlink_to(secret_path)
    with open_dropzone(parse_connection_config(target.config)) as dz:
        with pytest.raises(UnsafePathError, match="symbolic link"):
            dz.deliver(filename, [body], size=len(body), sha256=sha256_of(body), token="r1xabc")
    assert watch.events() == 0, "the link's target was opened"
    assert (target.export_dir / filename).is_symlink()


@pytest.mark.parametrize("folder", ["processed", "error"])
def test_move_ack_refuses_a_folder_link_that_appeared_after_the_listing(target, outside, folder):
    # The poll checks the folders before reading; the move checks again (on a directory
    # descriptor for the filesystem), so a link planted in between is refused too.
    name = "ack_sales_order_deadbeef_20250101_000000_cafebabe.json"
    ack = put_ack(target, name, b"{}")
    with open_dropzone(parse_connection_config(target.config)) as dz:
        (found,) = dz.list_acks("sales_order_deadbeef_20250101_000000_cafebabe.json")
        (target.ack_dir / folder).symlink_to(outside, target_is_directory=True)
        with pytest.raises(UnsafePathError, match="symbolic link") as refused:
            dz.move_ack(found.name, folder)
    assert refused.value.path == f"{target.config['ack_path']}/{folder}"
    assert ack.read_bytes() == b"{}" and list(outside.iterdir()) == []


# --- FTPS: the server resolves links, confined to the FTP user's root -----------------------


def test_ftps_never_reads_or_writes_outside_the_ftp_root_through_a_planted_link(ftps_server, tmp_path):
    """An FTP server follows links itself and MLSD shows a link as what it points at, so the
    client cannot refuse links the way it does over SFTP; what holds is the server's confinement
    to the FTP user's root (README, FTPS dropzones). Links to the outside of that root: nothing
    read, nothing written, nothing moved there."""
    raw = ftps_server.config()
    export_dir, ack_dir = ftps_server.local_path(raw["export_path"]), ftps_server.local_path(raw["ack_path"])
    outside = tmp_path / "outside"  # not below ftps_server.root
    outside.mkdir()
    secret = tmp_path / "secret.json"
    secret.write_bytes(json.dumps({**error_body("STOLEN"), "message": SENTINEL}).encode())
    watch = OpenWatch(secret)
    body, filename = b'{"order": 1}\n', "sales_order_deadbeef_20250101_000000_cafebabe.json"
    token = naming.execution_token(2, "abc")
    (export_dir / naming.tmp_name(filename, token)).symlink_to(secret)
    (ack_dir / f"error_{filename}").symlink_to(secret)
    (ack_dir / f"ack_{filename}").write_bytes(b"{}")
    (ack_dir / "processed").symlink_to(outside, target_is_directory=True)
    with open_dropzone(parse_connection_config(raw)) as dz:
        with pytest.raises(DropzoneError):  # STOR through the link: refused by the server
            dz.deliver(filename, [body], size=len(body), sha256=sha256_of(body), token=token)
        (export_dir / naming.tmp_name(filename, token)).unlink()
        (export_dir / filename).symlink_to(secret)
        with pytest.raises(DropzoneError):  # a link at the final name is not replaced
            dz.deliver(filename, [body], size=len(body), sha256=sha256_of(body), token="r1xabc")
        with pytest.raises(AckNotYetAvailable):  # listed (by its target's size), never read
            dz.read_ack(f"error_{filename}", max_bytes=1000)
        with pytest.raises(DropzoneError):  # processed/ leads outside: the move is refused
            dz.move_ack(f"ack_{filename}", "processed")
    assert watch.events() == 0, "the link's target was opened"
    assert SENTINEL in secret.read_text() and list(outside.iterdir()) == []
    assert (export_dir / filename).is_symlink() and (ack_dir / f"ack_{filename}").read_bytes() == b"{}"
    watch.close()
