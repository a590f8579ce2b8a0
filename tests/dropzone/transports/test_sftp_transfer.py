"""What only an SFTP server can be made to do: refuse a write, run out of disk (OpenSSH and asyncssh).

Everything every dropzone guarantees (delivery, conflicts, integrity, tmps,
acks, probe, confinement) is checked over both SFTP servers by
``tests/dropzone/transports/test_contract.py``.
"""

from __future__ import annotations

import os

import pytest

from dropzone import errors
from tests.dropzone.transports._sftp import connect, deliver
from tests.dropzone.transports._util import body_of
from tests.fixtures.asyncssh_server import READONLY_DIR


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
