"""The dropzone contract, once for every kind of dropzone.

``dropzone.delivery.Dropzone`` is the one delivery algorithm; each transport
only supplies primitives. So every guarantee the activities rely on is checked
here against each real dropzone through ``connectors.open_dropzone``: a local
directory, OpenSSH sshd, asyncssh, and an FTP server with explicit TLS
(pyftpdlib). The bytes, names and modes are read in the server's own directory.

What only one transport has (symlink races and FIFOs on the filesystem, host
keys and the connection pool over SFTP, certificates over FTPS, permission and
disk-full set-ups) is tested next to that transport.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dropzone import errors, naming
from dropzone.connection_config import parse_connection_config
from dropzone.connectors import open_dropzone
from dropzone.delivery import DeliveryResult, Dropzone
from tests.dropzone.transports._util import body_of, chunked
from tests.helpers import sha256_of

FILENAME = "sales_order_0a1b2c3d_20250101_120000_deadbeef.json"
OTHER = "sales_order_99999999_20250101_120000_deadbeef.json"
MiB = 1024 * 1024
KINDS = ["filesystem", "openssh", "asyncssh", "ftps"]
SERVER_FIXTURE = {"openssh": "openssh_server", "asyncssh": "asyncssh_sftp_server", "ftps": "ftps_server"}


@dataclass
class Zone:
    """One dropzone of one kind: how to open it, and where its directories are on this machine."""

    kind: str
    config: dict[str, Any]  # a connection config for parse_connection_config
    export_dir: Path
    ack_dir: Path
    fingerprint: str | None  # what the probe reports: the SFTP host key, the FTPS certificate
    local: Callable[[str], Path]  # a path as the transport names it -> the same file here

    def open(self, **overrides: Any) -> Dropzone:
        """A session through the one factory (``None`` drops a setting, e.g. ``ack_path``)."""
        raw = {k: v for k, v in {**self.config, **overrides}.items() if v is not None}
        return open_dropzone(parse_connection_config(raw))

    def exports(self) -> list[str]:
        return sorted(os.listdir(self.export_dir))

    def path_below_export(self, name: str) -> str:
        """A path that does not exist, as the transport names paths."""
        return f"{self.config['export_path'].rstrip('/')}/{name}"


@pytest.fixture(params=KINDS)
def zone(request: pytest.FixtureRequest, tmp_path: Path) -> Zone:
    kind = request.param
    if kind == "filesystem":
        export_dir, ack_dir = tmp_path / "export", tmp_path / "ack"
        export_dir.mkdir()
        ack_dir.mkdir()
        config = {"mode": "filesystem", "export_path": str(export_dir), "ack_path": str(ack_dir)}
        return Zone(kind, config, export_dir, ack_dir, None, Path)
    server = request.getfixturevalue(SERVER_FIXTURE[kind])
    config = server.config()
    fingerprint = server.fingerprint if kind == "ftps" else server.host_key_fingerprint
    return Zone(
        kind, config, server.local_path(config["export_path"]), server.local_path(config["ack_path"]),
        fingerprint, server.local_path,
    )


def deliver(
    dz: Dropzone, data: bytes, *, name: str = FILENAME, token: str = "tok1", chunk: int = 64 * 1024, attempt: int = 1
) -> DeliveryResult:
    return dz.deliver(name, chunked(data, chunk), size=len(data), sha256=sha256_of(data), token=token, attempt=attempt)


def write_local(path: Path, data: bytes, *, mtime: float | None = None) -> None:
    """A file put there by someone else (the ERP, a crashed worker), owned like its directory
    (OpenSSH serves a user of its own)."""
    path.write_bytes(data)
    directory = path.parent.stat()
    os.chown(path, directory.st_uid, directory.st_gid)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


# ----- deliver -----


def test_delivered_bytes_land_under_the_final_name_with_their_sha256_and_mode(zone: Zone):
    data = body_of(3 * MiB + 17)
    with zone.open() as dz:
        result = deliver(dz, data, chunk=MiB)
    assert result == DeliveryResult(
        path=f"{zone.config['export_path']}/{FILENAME}", already_present=False, size_bytes=len(data), sha256=sha256_of(data)
    )
    final = zone.local(result.path)
    assert final.read_bytes() == data
    assert stat.S_IMODE(final.stat().st_mode) == 0o640  # the default file_mode
    assert zone.exports() == [FILENAME]  # no .tmp left


def test_file_mode_is_applied(zone: Zone):
    with zone.open(file_mode="0600") as dz:
        result = deliver(dz, b'{"a": 1}')
    assert stat.S_IMODE(zone.local(result.path).stat().st_mode) == 0o600


def test_small_chunks_and_an_empty_file(zone: Zone):
    data = body_of(100_003)
    with zone.open() as dz:
        deliver(dz, data, name="sales_order_small.json", chunk=7)
        deliver(dz, b"", name="sales_order_empty.json")
        assert deliver(dz, data, name="sales_order_small.json", token="t9").already_present
    assert (zone.export_dir / "sales_order_small.json").read_bytes() == data
    assert (zone.export_dir / "sales_order_empty.json").read_bytes() == b""


def test_redelivery_of_the_same_bytes_is_already_present_and_touches_nothing(zone: Zone):
    data = body_of(200_000)
    with zone.open() as dz:
        deliver(dz, data)
        before = (zone.export_dir / FILENAME).stat().st_mtime_ns
        again = deliver(dz, data, token="tok2")
    assert again.already_present and again.sha256 == sha256_of(data) and again.size_bytes == len(data)
    assert (zone.export_dir / FILENAME).stat().st_mtime_ns == before
    assert zone.exports() == [FILENAME]


def test_different_bytes_under_the_same_name_are_a_conflict_never_an_overwrite(zone: Zone):
    data = body_of(200_000)
    with zone.open() as dz:
        first = deliver(dz, data)
        with pytest.raises(errors.DeliveryConflictError) as same_size:
            deliver(dz, body_of(len(data), seed=9), token="tok3")
        with pytest.raises(errors.DeliveryConflictError):
            deliver(dz, data + b"x", token="tok4")  # another size
    assert first.path in str(same_size.value)
    assert (zone.export_dir / FILENAME).read_bytes() == data
    assert zone.exports() == [FILENAME]


@pytest.mark.parametrize(
    ("claimed_size", "claimed_sha"),
    [(0, "other"), (-10, "right"), (+10, "right")],
    ids=["wrong_sha256", "source_longer", "source_shorter"],
)
def test_a_source_that_does_not_match_its_size_and_sha256_leaves_nothing(zone: Zone, claimed_size, claimed_sha):
    data = body_of(500_000)
    sha = sha256_of(data) if claimed_sha == "right" else sha256_of(b"other")
    with zone.open() as dz:
        with pytest.raises(errors.IntegrityError):
            dz.deliver(FILENAME, chunked(data, 65536), size=len(data) + claimed_size, sha256=sha, token="t1")
        assert zone.exports() == []
        assert not deliver(dz, data).already_present  # the session is still usable


def test_a_failing_source_leaves_no_tmp(zone: Zone):
    def source() -> Iterator[bytes]:
        yield b"x" * 300_000
        raise errors.StorageUnavailableError("storage went away")

    with zone.open() as dz, pytest.raises(errors.StorageUnavailableError):
        dz.deliver(FILENAME, source(), size=600_000, sha256=sha256_of(b""), token="t1")
    assert zone.exports() == []


class Cancelled(Exception):
    """What a heartbeat raises from the progress callback when the activity is cancelled."""


def test_progress_counts_each_chunk_and_raising_in_it_stops_the_upload_leaving_nothing(zone: Zone):
    data = body_of(4 * MiB)
    counts: list[int] = []

    def progress(done: int) -> None:
        counts.append(done)
        if done >= 2 * MiB:
            raise Cancelled()

    with zone.open() as dz, pytest.raises(Cancelled):
        dz.deliver(FILENAME, chunked(data, MiB), size=len(data), sha256=sha256_of(data), token="t1", progress=progress)
    assert counts == [MiB, 2 * MiB] and zone.exports() == []
    with zone.open() as dz:
        assert not deliver(dz, data, token="t2").already_present


def test_each_execution_writes_a_tmp_of_its_own(zone: Zone):
    """``<name>.<token>.tmp``: another execution's file is never touched; a stale one of
    the same execution (a crashed try of it) is overwritten."""
    racing = zone.export_dir / f"{FILENAME}.tok0.tmp"
    write_local(racing, b"another execution, still writing")
    write_local(zone.export_dir / f"{FILENAME}.tok1.tmp", b"half a file from a crashed try")
    data = body_of(2 * MiB)
    seen: list[list[str]] = []

    def progress(_done: int) -> None:
        seen.append(sorted(n for n in os.listdir(zone.export_dir) if n.endswith(".tmp")))

    with zone.open() as dz:
        dz.deliver(FILENAME, chunked(data, 64 * 1024), size=len(data), sha256=sha256_of(data), token="tok1", progress=progress)
    assert seen and all(names == [racing.name, f"{FILENAME}.tok1.tmp"] for names in seen), seen[-1:]
    assert (zone.export_dir / FILENAME).read_bytes() == data
    assert racing.read_bytes() == b"another execution, still writing"
    assert zone.exports() == sorted([FILENAME, racing.name])


def test_a_retry_removes_the_tmps_of_earlier_attempts_only(zone: Zone):
    # What a worker killed mid-upload leaves: attempt 1's partial .tmp. Attempt 3
    # (still writing, in a race), other exports' tmps and untagged tmps survive attempt 2.
    leftovers = {
        f"{FILENAME}.{naming.execution_token(1, '0a0a')}.tmp": False,
        f"{FILENAME}.{naming.execution_token(3, '0b0b')}.tmp": True,
        f"{OTHER}.{naming.execution_token(1, '0c0c')}.tmp": True,
        f"{FILENAME}.tok1.tmp": True,
    }
    for name in leftovers:
        write_local(zone.export_dir / name, b'{"partial": ')
    data = body_of(70_000)
    kept = sorted([FILENAME, *(name for name, survives in leftovers.items() if survives)])
    with zone.open() as dz:
        assert not deliver(dz, data, token=naming.execution_token(2, "1d1d"), attempt=2).already_present
        assert zone.exports() == kept
        # A first attempt never lists the directory, so it leaves every tmp alone.
        (zone.export_dir / FILENAME).unlink()
        deliver(dz, data, token=naming.execution_token(1, "2e2e"), attempt=1)
        assert zone.exports() == kept
        # Already delivered (the crash came after the rename): the retry still sweeps.
        write_local(zone.export_dir / f"{FILENAME}.{naming.execution_token(2, '3f3f')}.tmp", b"{")
        assert deliver(dz, data, token=naming.execution_token(4, "4a4a"), attempt=4).already_present
    # Attempt 4 outranks attempt 3 too.
    assert zone.exports() == sorted([FILENAME, f"{OTHER}.{naming.execution_token(1, '0c0c')}.tmp", f"{FILENAME}.tok1.tmp"])


def test_stale_tmps_nobody_claims_are_removed_and_nothing_else(zone: Zone):
    """What a worker killed mid-upload leaves when no retry follows (the run was terminated)."""
    now = time.time()
    files = {  # name: (last written, still there afterwards)
        f"{FILENAME}.{naming.execution_token(1, 'a1a1')}.tmp": (now - 3600, False),
        f"{OTHER}.{naming.execution_token(1, 'b2b2')}.tmp": (now - 3600, True),  # its export still runs
        f"{FILENAME}.{naming.execution_token(2, 'c3c3')}.tmp": (now, True),  # written a moment ago
        FILENAME: (now - 3600, True),  # a delivered file
        "notes.tmp": (now - 3600, True),  # not one of ours
    }
    for name, (mtime, _) in files.items():
        write_local(zone.export_dir / name, b"{", mtime=mtime)
    with zone.open() as dz:
        removed = dz.remove_stale_tmps(now - 600, keep=lambda filename: filename == OTHER)
    assert removed == 1
    assert zone.exports() == sorted(name for name, (_, kept) in files.items() if kept)


def test_without_atomic_write_the_same_guarantees_hold_on_the_final_name(zone: Zone):
    data = body_of(200_000)
    with zone.open(atomic_write=False) as dz:
        assert not deliver(dz, data).already_present
        assert deliver(dz, data).already_present
        with pytest.raises(errors.DeliveryConflictError):
            deliver(dz, body_of(200_000, seed=3))
        with pytest.raises(errors.IntegrityError):
            dz.deliver(OTHER, chunked(data, 4096), size=len(data), sha256=sha256_of(b"no"), token="t")
    assert zone.exports() == [FILENAME]
    assert (zone.export_dir / FILENAME).read_bytes() == data


def test_a_missing_export_directory_is_named(zone: Zone):
    missing = zone.path_below_export("does-not-exist")
    with zone.open(export_path=missing) as dz:
        with pytest.raises(errors.MissingDirectoryError) as info:
            deliver(dz, b"{}")
        probe = dz.probe()
    assert "does-not-exist" in str(info.value)
    assert not probe.ok and probe.detail.startswith("MISSING_DIRECTORY")


# ----- acks -----


def test_acks_are_listed_read_and_moved(zone: Zone):
    ack, error = naming.ack_name(FILENAME), naming.error_ack_name(FILENAME)
    with zone.open() as dz:
        assert dz.list_acks(FILENAME) == []
        write_local(zone.ack_dir / f"{ack}.tmp", b"partial")  # the ERP still writing
        write_local(zone.ack_dir / ack, b'{"status": "ACKED"}')
        write_local(zone.ack_dir / error, b'{"status": "FAILED"}')
        write_local(zone.ack_dir / naming.ack_name(OTHER), b"{}")
        (zone.ack_dir / naming.error_ack_name(OTHER)).mkdir()  # not a file: not an ack
        assert [a.name for a in dz.list_acks(OTHER)] == [naming.ack_name(OTHER)]
        acks = dz.list_acks(FILENAME)
        assert [(a.name, a.kind, a.export_filename, a.size, a.is_link) for a in acks] == [
            (ack, "ack", FILENAME, 19, False),
            (error, "error", FILENAME, 20, False),
        ]
        assert all(a.mtime > 0 for a in acks)
        assert dz.read_ack(ack, max_bytes=1000) == b'{"status": "ACKED"}'
        assert dz.read_ack(ack, max_bytes=5) == b'{"stat'  # max_bytes + 1: the caller can tell "too large"

        moved = dz.move_ack(ack, "processed")
        assert moved == f"{dz.ack_path}/processed/{ack}"
        assert dz.move_ack(ack, "processed") == moved  # retried after it succeeded: the same answer
        # The target exists: a numeric suffix, never an overwrite.
        write_local(zone.ack_dir / ack, b"second")
        assert dz.move_ack(ack, "processed") == f"{moved}.1"
        write_local(zone.ack_dir / ack, b"third")
        assert dz.move_ack(ack, "processed") == f"{moved}.2"
        assert dz.move_ack(error, "error") == f"{dz.ack_path}/error/{error}"

        assert dz.list_acks(FILENAME) == []
        with pytest.raises(errors.AckNotYetAvailable):
            dz.read_ack(ack, max_bytes=10)
        with pytest.raises(errors.MissingDirectoryError):
            dz.move_ack(naming.ack_name(OTHER + "x"), "processed")
        with pytest.raises(ValueError):
            dz.move_ack(naming.ack_name(OTHER), "elsewhere")  # type: ignore[arg-type]
    processed = zone.ack_dir / "processed"
    assert [(processed / n).read_bytes() for n in (ack, f"{ack}.1", f"{ack}.2")] == [b'{"status": "ACKED"}', b"second", b"third"]
    assert (zone.ack_dir / "error" / error).read_bytes() == b'{"status": "FAILED"}'
    left = ["error", "processed", f"{ack}.tmp", naming.ack_name(OTHER), naming.error_ack_name(OTHER)]
    assert sorted(os.listdir(zone.ack_dir)) == sorted(left)


def test_list_all_acks_finds_every_ack_oldest_first_and_nothing_else(zone: Zone):
    now = 1_767_225_600  # whole seconds apart: FTP's MLSD has no finer mtime
    answers = {naming.error_ack_name(OTHER): now - 30, naming.ack_name(FILENAME): now - 20, naming.ack_name(OTHER): now - 10}
    for name, mtime in answers.items():
        write_local(zone.ack_dir / name, b"{}", mtime=mtime)
    for name in (f"{naming.ack_name(FILENAME)}.tmp", "readme.txt", ".ack_hidden.json", "ack_"):
        write_local(zone.ack_dir / name, b"{}", mtime=now - 40)
    (zone.ack_dir / naming.ack_name("sales_order_dir.json")).mkdir()  # not a file
    with zone.open() as dz:
        listed = dz.list_all_acks()
        dz.move_ack(naming.ack_name(OTHER), "processed")
        after = dz.list_all_acks()  # processed/ exists now: still only the acks themselves
    assert [(a.name, a.kind, a.export_filename, int(a.mtime)) for a in listed] == [
        (naming.error_ack_name(OTHER), "error", OTHER, now - 30),
        (naming.ack_name(FILENAME), "ack", FILENAME, now - 20),
        (naming.ack_name(OTHER), "ack", OTHER, now - 10),
    ]
    assert [a.name for a in after] == [naming.error_ack_name(OTHER), naming.ack_name(FILENAME)]


def test_a_missing_ack_directory_is_named(zone: Zone):
    with zone.open(ack_path=zone.path_below_export("nowhere")) as dz, pytest.raises(errors.MissingDirectoryError) as info:
        dz.list_all_acks()
    assert "nowhere" in str(info.value)


def test_ack_operations_need_an_ack_path(zone: Zone):
    with zone.open(ack_path=None) as dz:
        for call in (
            lambda: dz.list_acks(FILENAME),
            dz.list_all_acks,
            lambda: dz.read_ack(naming.ack_name(FILENAME), max_bytes=10),
            lambda: dz.move_ack(naming.ack_name(FILENAME), "processed"),
        ):
            with pytest.raises(errors.InvalidConfigError, match="ack_path"):
                call()


# ----- probe -----


def test_probe_writes_reads_back_and_removes_a_file(zone: Zone):
    with zone.open() as dz:
        result = dz.probe()
    assert result.ok, result.detail
    assert result.host_key_fingerprint == zone.fingerprint
    assert zone.exports() == []


def test_probe_reports_a_missing_ack_path(zone: Zone):
    with zone.open(ack_path=zone.path_below_export("no-acks-here")) as dz:
        result = dz.probe()
    assert not result.ok and "MISSING_DIRECTORY" in result.detail
    assert zone.exports() == []


# ----- the label -----

SCHEME = {"filesystem": "file://", "openssh": "sftp://", "asyncssh": "sftp://", "ftps": "ftps://"}


def test_one_label_names_the_connection_in_every_message_and_never_its_password(zone: Zone):
    data = b'{"a": 1}'
    with zone.open() as dz:
        deliver(dz, data)
        with pytest.raises(errors.DeliveryConflictError) as conflict:
            deliver(dz, b'{"a": 2}', token="tok2")
        with pytest.raises(errors.IntegrityError) as integrity:
            dz.deliver(OTHER, [data], size=len(data), sha256=sha256_of(b"other"), token="t")
        label = dz.label
    assert label == parse_connection_config(zone.config).label and label.startswith(SCHEME[zone.kind])
    assert all(str(e.value).startswith(f"{label}: ") for e in (conflict, integrity)), (conflict.value, integrity.value)
    if "password" in zone.config:
        assert zone.config["password"] not in label + str(conflict.value) + str(integrity.value)


# ----- confinement -----

HOSTILE_NAMES = ["../secret.json", "/etc/passwd", ".hidden", "a/b.json", "x\x00y", "x\ny", "", "..", "a..b", "é.json"]


def test_names_that_could_leave_their_directory_are_refused_before_any_io(zone: Zone):
    outside = zone.export_dir.parent / "secret.json"
    write_local(outside, b"{}")
    with zone.open() as dz:
        for name in HOSTILE_NAMES:
            with pytest.raises(errors.InvalidConfigError):
                dz.deliver(name, [b"{}"], size=2, sha256=sha256_of(b"{}"), token="t")
            with pytest.raises(errors.InvalidConfigError):
                dz.read_ack(name, max_bytes=10)
            with pytest.raises(errors.InvalidConfigError):
                dz.move_ack(name, "processed")
            with pytest.raises(errors.InvalidConfigError):
                dz.list_acks(name)
        with pytest.raises(ValueError):
            dz.deliver(FILENAME, [b"{}"], size=2, sha256=sha256_of(b"{}"), token="../x")
    assert outside.read_bytes() == b"{}"
    assert zone.exports() == [] and os.listdir(zone.ack_dir) == []
